"""Completion sources: how a dispatcher learns that a rollout reached a terminal status.

Every source implements :class:`CompletionSource`: ``watch`` rollout ids, then ``next_finished``
yields each of them once, after the store has it in a terminal status. One class per strategy;
:func:`open_completion_source` picks one from ``DispatchConfig.wait`` and the kind of store:

* :class:`StoreEventsSource` (``events``; an in-process ``InMemoryLightningStore``, bare or inside
  a ``LightningStoreServer`` owned by this process): the store sets an ``aiologic.Event`` per
  rollout when it finishes; the source awaits that event directly. The store's own
  ``wait_for_rollouts`` waits on the same event through ``asyncio.to_thread``: one
  default-executor thread per unfinished rollout, which queues up once more rollouts are in
  flight than the executor has threads, and starves every other ``to_thread`` user. Awaiting the
  event costs no thread.
* :class:`WaitAnySource` (``wait_any``; a ``LightningStoreClient`` whose server is agl-tinker's
  ``LeanStoreServer``): one ``POST /v1/agl/agl-tinker/waits/any`` blocks server-side until any of
  its rollouts finishes and answers with the finished rollouts and their latest attempts
  (:attr:`CompletionSource.finished_rollouts`); rollouts enqueued meanwhile get a request of
  their own. A server without the route makes it long-poll instead (``wait="auto"``) or fail.
* :class:`LongPollSource` (``long_poll``; a stock ``agl store`` server, and any other store):
  Agent-lightning's client refuses waits over 0.1 s, and a multi-id wait returns only when *all*
  ids finish. So ``long_poll_slots`` single-id ``wait_for_rollouts`` requests stay open, rotated
  over the rollouts in flight, and whenever one returns a non-blocking
  ``wait_for_rollouts(<the others>, timeout=0)`` sweeps the rest.

``RolloutConfig`` timeouts are applied by the store's watchdog, which runs only inside store
calls. Long-poll and wait-for-any requests are such calls; the events source ticks a
``wait_for_rollouts(timeout=0)`` every ``watchdog_s`` when a timeout is configured (the tick is
not how completions are detected). Measured figures: ``benchmarks/dispatch.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import aiohttp
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.types import Rollout

from agl_tinker.agl_internals import client_request_json
from agl_tinker.dispatch.store_calls import StoreCaller
from agl_tinker.dispatch.types import DispatchConfig, DispatchError, RolloutsLost
from agl_tinker.store_server import MAX_WAIT_ANY_S, WAIT_ANY_PATH, WaitAnyResponse, completion_events

__all__ = [
    "CLIENT_MAX_WAIT_S",
    "CompletionSource",
    "LongPollSource",
    "StoreEventsSource",
    "WaitAnySource",
    "open_completion_source",
    "spread_timeouts",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")

CLIENT_MAX_WAIT_S = 0.1
"""``LightningStoreClient.wait_for_rollouts`` raises for a longer timeout."""


class CompletionSource(Protocol):
    """Turns "rollout X reached a terminal status" into a stream of rollout ids, once per id.

    Contract for every implementation:

    * ``watch(ids)`` starts watching; it never blocks and may be called any number of times.
    * ``next_finished()`` blocks until at least one watched rollout has finished and returns all
      that have so far, each id exactly once over the source's life; an error of the background
      work (``StoreCallError``, ``RolloutsLost``, ``DispatchError``) is raised from here.
    * ``noticed[rid]`` is the ``time.time()`` the source saw ``rid`` finished.
    * ``finished_rollouts`` holds finished rollouts that came with their completion (latest
      attempt included), for the reader to ``pop`` instead of querying the store again.
    * ``aclose()`` cancels the background work; the source is not used afterwards.
    """

    noticed: dict[str, float]
    finished_rollouts: dict[str, Rollout]

    @property
    def strategy(self) -> str:
        """How completions are learned now: ``events``, ``wait_any`` or ``long_poll``."""
        ...

    def watch(self, rollout_ids: Sequence[str]) -> None: ...

    async def next_finished(self) -> list[str]: ...

    async def aclose(self) -> None: ...


def open_completion_source(
    store: LightningStore, config: DispatchConfig, call: StoreCaller
) -> CompletionSource:
    """The completion source ``config.wait`` asks for on ``store``.

    ``"auto"`` picks events for an in-process in-memory store, wait-for-any (falling back to
    long-polling on a server without the route) for a ``LightningStoreClient``, else long-polling.

    Args:
        store: the store rollouts are enqueued in.
        config: ``wait``, ``long_poll_s``, ``long_poll_slots``, ``watchdog_s`` and
            ``rollout_config`` (whether the events source must tick the store's watchdog).
        call: how the source makes store calls (retries).

    Returns:
        A source not watching anything yet.

    Raises:
        DispatchError: ``wait`` names a strategy ``store`` cannot serve.
    """
    events = completion_events(store) if config.wait in ("auto", "events") else None
    if config.wait == "events" and events is None:
        raise DispatchError(
            f"wait='events' needs an in-process InMemoryLightningStore, got {type(store).__name__}"
        )
    if events is not None:
        return StoreEventsSource(store, config, call, events=events)
    if isinstance(store, LightningStoreClient) and config.wait in ("auto", "wait_any"):
        return WaitAnySource(store, config, call, fallback=config.wait == "auto")
    if config.wait == "wait_any":
        raise DispatchError(f"wait='wait_any' needs a LightningStoreClient, got {type(store).__name__}")
    return LongPollSource(store, config, call)


def spread_timeouts(slice_s: float, n: int) -> list[float]:
    """``n`` timeouts evenly over (0, slice_s], largest first, none above ``slice_s``.

    ``slice_s * k / n`` can round above ``slice_s`` (0.1 * 3 / 3 > 0.1), which the HTTP
    client refuses; scaling by ``k / n`` (exactly 1.0 for ``k == n``) cannot.
    """
    return [slice_s * ((n - i) / n) for i in range(n)]


class _NoWaitAny(Exception):
    """The store server has no wait-for-any route (404 or 405): it is not a ``LeanStoreServer``."""


class _SourceBase:
    """What every source shares: the watched set, the output queue, guarded background tasks."""

    def __init__(self, store: LightningStore, call: StoreCaller) -> None:
        self._store = store
        self._call = call
        self._queue: asyncio.Queue[str | BaseException] = asyncio.Queue()
        self._watching: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: asyncio.Task[None] | None = None
        self.noticed: dict[str, float] = {}
        self.finished_rollouts: dict[str, Rollout] = {}

    async def next_finished(self) -> list[str]:
        """Block until at least one watched rollout finished; return all that have, so far."""
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        for item in items:
            if isinstance(item, BaseException):
                raise item
        return [item for item in items if isinstance(item, str)]

    async def aclose(self) -> None:
        """Cancel every background task and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # surfaced to the dispatcher by next_finished()
                self._queue.put_nowait(e)

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _mark(self, rid: str) -> None:
        if rid in self._watching:
            self._watching.discard(rid)
            self.noticed[rid] = time.time()
            self._queue.put_nowait(rid)


class StoreEventsSource(_SourceBase):
    """Awaits the in-process in-memory store's own per-rollout completion events (no thread).

    A rollout without an event (the store did not make one) is found by the watchdog tick, which
    also runs when ``rollout_config`` sets a timeout, so the store's watchdog runs with silent
    runners.
    """

    def __init__(
        self, store: LightningStore, config: DispatchConfig, call: StoreCaller, *, events: Mapping[str, Any]
    ) -> None:
        super().__init__(store, call)
        self._events = events
        rc = config.rollout_config
        self._needs_watchdog = rc is not None and (
            rc.timeout_seconds is not None or rc.unresponsive_seconds is not None
        )
        self._watchdog_s = config.watchdog_s
        self._missing_events = False

    @property
    def strategy(self) -> str:
        return "events"

    def watch(self, rollout_ids: Sequence[str]) -> None:
        for rid in rollout_ids:
            self._watching.add(rid)
            event = self._events.get(rid)
            if event is not None:
                self._spawn(self._await_event(rid, event))
            else:
                self._missing_events = True
        if self._background is None and (self._needs_watchdog or self._missing_events):
            self._background = self._spawn(self._watchdog_loop())

    async def _await_event(self, rid: str, event: Any) -> None:
        await event  # aiologic.Event is awaitable across threads and event loops, no executor thread
        self._mark(rid)

    async def _watchdog_loop(self) -> None:
        # The store applies RolloutConfig timeouts only when one of its methods is called. With
        # event waits and silent runners nothing calls it, so a hung rollout would never time out;
        # this tick is such a call. wait_for_rollouts(timeout=0) is cheap and also returns any
        # rollout whose completion event is missing (those are only found here).
        while True:
            await asyncio.sleep(self._watchdog_s)  # ok: drives the store's timeout watchdog, not completion
            ids = list(self._watching)
            if not ids:
                continue
            done = await self._call(
                "wait_for_rollouts",
                functools.partial(self._store.wait_for_rollouts, rollout_ids=ids, timeout=0),
            )
            for rollout in done:
                self._mark(rollout.rollout_id)


class LongPollSource(_SourceBase):
    """``long_poll_slots`` single-rollout long-polls, rotated over the rollouts in flight.

    A request that returns, finished or timed out, triggers one sweep of every rollout no slot is
    holding: ``wait_for_rollouts(timeout=0)`` never blocks, so it costs the server no thread.
    Watched rollouts are seen one round trip after they finish, the others at the next sweep,
    about every ``long_poll_s / long_poll_slots``. The first arming of several slots spreads
    their timeouts over (0, long_poll_s] so the slots, and sweeps, interleave. Over HTTP the
    block per request is clamped to :data:`CLIENT_MAX_WAIT_S`.
    """

    def __init__(self, store: LightningStore, config: DispatchConfig, call: StoreCaller) -> None:
        super().__init__(store, call)
        slice_s = config.long_poll_s
        if isinstance(store, (LightningStoreClient, LightningStoreServer)):
            slice_s = min(slice_s, CLIENT_MAX_WAIT_S)
        self._slice_s = slice_s
        self._n_slots = config.long_poll_slots
        self._polled: deque[str] = deque()  # rotation order
        self._new_work = asyncio.Event()

    @property
    def strategy(self) -> str:
        return "long_poll"

    def watch(self, rollout_ids: Sequence[str]) -> None:
        for rid in rollout_ids:
            self._watching.add(rid)
            self._polled.append(rid)
        if self._polled:
            self._new_work.set()
        if self._background is None:
            self._background = self._spawn(self._run())

    async def _run(self) -> None:
        await self._long_poll_loop()

    async def _returned(self, armed: Mapping[asyncio.Task[R], Any]) -> list[asyncio.Task[R]]:
        """Wait until an armed request returns or new rollouts are watched; the returned requests."""
        if not armed:
            self._new_work.clear()
            await self._new_work.wait()
            return []
        self._new_work.clear()
        more_work = asyncio.create_task(self._new_work.wait())
        done, _ = await asyncio.wait([*armed, more_work], return_when=asyncio.FIRST_COMPLETED)
        more_work.cancel()
        return [task for task in armed if task in done]

    async def _long_poll_loop(self) -> None:
        armed: dict[asyncio.Task[bool], str] = {}
        try:
            while True:
                free = self._n_slots - len(armed)
                picks = self._next_unarmed(free, set(armed.values()))
                timeouts = (
                    spread_timeouts(self._slice_s, len(picks)) if not armed else [self._slice_s] * len(picks)
                )
                for rid, timeout in zip(picks, timeouts, strict=True):
                    armed[asyncio.create_task(self._poll_one(rid, timeout))] = rid
                returned = await self._returned(armed)
                for task in returned:
                    del armed[task]
                    task.result()  # re-raises a StoreCallError from the slot
                unarmed = [rid for rid in self._watching if rid not in armed.values()]
                if returned and unarmed:
                    swept = await self._call(
                        "wait_for_rollouts",
                        functools.partial(self._store.wait_for_rollouts, rollout_ids=unarmed, timeout=0),
                    )
                    for rollout in swept:
                        self._mark(rollout.rollout_id)
        finally:
            for task in armed:
                task.cancel()
            await asyncio.gather(*armed, return_exceptions=True)

    def _next_unarmed(self, n: int, armed: set[str]) -> list[str]:
        """Up to ``n`` unfinished rollouts no slot holds, round-robin; forgets finished ones."""
        picks: list[str] = []
        for _ in range(len(self._polled)):
            if len(picks) >= n:
                break
            rid = self._polled.popleft()
            if rid not in self._watching:
                continue
            self._polled.append(rid)
            if rid not in armed:
                picks.append(rid)
        return picks

    async def _poll_one(self, rid: str, timeout: float) -> bool:
        started = time.perf_counter()
        done = await self._call(
            "wait_for_rollouts",
            functools.partial(self._store.wait_for_rollouts, rollout_ids=[rid], timeout=timeout),
        )
        if any(r.rollout_id == rid for r in done):
            self._mark(rid)
            return True
        early = timeout - (time.perf_counter() - started)
        if early > timeout / 2:
            # The store answered without blocking: it does not know the rollout, or it does not
            # implement waiting. Tell the two apart instead of spinning.
            rollout = await self._call(
                "get_rollout_by_id", functools.partial(self._store.get_rollout_by_id, rid)
            )
            if rollout is None:
                raise RolloutsLost(f"rollout {rid} is not in the store any more")
            await asyncio.sleep(early)  # ok: keep the long-poll cadence when the store does not block
        return False


class WaitAnySource(LongPollSource):
    """Wait-for-any requests (``LeanStoreServer``) covering every rollout in flight.

    Each request blocks server-side until one of its rollouts finishes (or ``watchdog_s``
    passes) and brings the finished ones back with their latest attempts: a completion is seen
    one round trip after it happens, and the reader need not query the rollout again. Rollouts
    enqueued while a request is open get a request of their own; a returned request's
    unfinished rollouts join the next one. A server without the route answers 404 or 405: then
    the source long-polls as its base class does (``fallback``, i.e. ``wait="auto"``; ``strategy``
    says ``long_poll`` from then on) or fails with ``DispatchError``.
    """

    def __init__(
        self, store: LightningStoreClient, config: DispatchConfig, call: StoreCaller, *, fallback: bool
    ) -> None:
        super().__init__(store, config, call)
        self._client = store
        self._watchdog_s = config.watchdog_s
        self._fallback = fallback
        self._fell_back = False

    @property
    def strategy(self) -> str:
        return "long_poll" if self._fell_back else "wait_any"

    async def _run(self) -> None:
        armed: dict[asyncio.Task[None], frozenset[str]] = {}
        try:
            while True:
                covered = frozenset().union(*armed.values())
                fresh = [rid for rid in self._watching if rid not in covered]
                if fresh:
                    armed[asyncio.create_task(self._wait_any_once(fresh))] = frozenset(fresh)
                for task in await self._returned(armed):
                    del armed[task]
                    task.result()  # re-raises a StoreCallError, or _NoWaitAny
        except _NoWaitAny:
            if not self._fallback:
                raise DispatchError(
                    f"wait='wait_any': the store server has no {WAIT_ANY_PATH} route (not an agl-tinker store)"
                ) from None
            logger.info("the store server has no wait-for-any route; long-polling instead")
            self._fell_back = True
        finally:
            for task in armed:
                task.cancel()
            await asyncio.gather(*armed, return_exceptions=True)
        await self._long_poll_loop()

    async def _wait_any_once(self, ids: list[str]) -> None:
        body = {"rollout_ids": ids, "timeout": min(self._watchdog_s, MAX_WAIT_ANY_S)}

        async def request() -> Any:
            try:
                return await client_request_json(self._client, "post", WAIT_ANY_PATH, body=body)
            except aiohttp.ClientResponseError as e:
                if e.status in (404, 405):  # 405: the stock server's dashboard route takes GET only
                    raise _NoWaitAny from e
                raise

        answer = WaitAnyResponse.model_validate(await self._call("wait_any", request))
        if answer.unknown:
            raise RolloutsLost(f"rollouts not in the store any more: {', '.join(answer.unknown[:5])}")
        for rollout in answer.finished:
            self.finished_rollouts[rollout.rollout_id] = rollout
            self._mark(rollout.rollout_id)
