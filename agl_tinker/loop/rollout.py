"""Dispatch one batch of task groups through a LightningStore and collect processed results.

``dispatch_batch`` enqueues ``len(tasks) × group_size`` rollouts (``enqueue_many_rollouts``,
with the mode, resources id and ``RolloutConfig`` the caller chose), keeps at most
``max_in_flight`` of them unfinished in the store (refilling as others finish), learns of each
completion without fixed-interval polling, reads the finished rollout (latest attempt) and the
spans of its latest attempt, and hands both to a ``process`` callable (the pure reconstruct ->
align -> rewards pipeline). Results come back grouped by task, in slot order, with timing stats.

How completions are learned (measured in ``benchmarks/dispatch.py``):

* ``events`` (in-process ``InMemoryLightningStore``, bare or inside a ``LightningStoreServer``
  owned by this process): the store sets an ``aiologic.Event`` per rollout when it reaches a
  terminal status; we await that event directly. The store's own ``wait_for_rollouts`` waits on
  the same event but through ``asyncio.to_thread(evt.wait)``: one default-executor thread per
  unfinished rollout (``min(32, cpus + 4)`` threads), so with more rollouts in flight than
  threads the waits queue up (p99 ~100 ms at 32 in flight on 2 cores) and starve every other
  ``to_thread`` user of the training loop. Awaiting the event costs no thread (p99 < 1 ms).
* ``wait_any`` (``LightningStoreClient`` whose server is agl-tinker's ``LeanStoreServer``): one
  request ``POST /v1/agl/agl-tinker/waits/any`` blocks server-side on the store's completion
  events (no thread) until any of its rollouts finishes, and answers with the finished rollouts
  and their latest attempts; rollouts enqueued meanwhile get a request of their own. A completion
  is seen one round trip after it happens, and only the spans remain to be read.
* ``long_poll`` (a stock ``agl store`` server, and any other store): Agent-lightning's client
  refuses waits over 0.1 s, and its server answers a wait on the in-memory store the same
  thread-hungry way as above: one executor thread per unfinished id per request, and a multi-id
  wait returns only when *all* ids finish or the timeout expires. So ``long_poll_slots`` (4)
  requests ``wait_for_rollouts(rollout_ids=[rid], timeout=0.1)`` stay open, rotated over the
  rollouts in flight; each returns one round trip after its rollout finishes. Whenever one
  returns, a single ``wait_for_rollouts(<all other ids>, timeout=0)`` (non-blocking server-side:
  no thread) picks up every other finished rollout. Detection latency is one round trip for
  watched rollouts and about ``0.1 s / slots`` for the rest, at ~20 requests/s per slot while
  rollouts are in flight. Per finished round, one ``query_rollouts`` (rollouts with their latest
  attempts) runs alongside one ``query_spans`` per rollout.

Measured (``benchmarks/dispatch.py``, 32 runners on 2 shared cores, split mode): every store
call, the runners' own included, queues at the one store server. With ``agl-tinker store``
(``LeanStoreServer``) the overhead p50 is 8-14 ms by ``wait_any`` and 20-24 ms by
``long_poll``, against 7-9 ms for a design told of completions for free; Agent-lightning's own
server, at 3-5 ms of CPU per request, takes 60-75 ms. ``RolloutOutcome`` splits the overhead at
the moment a completion was noticed (``detect_s``/``read_s``).

``RolloutConfig`` timeouts and retries are applied by the store, not here: its watchdog
(``healthcheck_before``) runs at the start of store calls, debounced by the store's
``scan_debounce_seconds``, and marks attempts ``timeout``/``unresponsive``; a status listed in
``retry_condition`` requeues the rollout until ``max_attempts``, otherwise it fails. Long-poll
and wait-for-any requests drive that watchdog by themselves (a wait-for-any request blocks at
most ``watchdog_s``); in ``events`` mode a tick every ``watchdog_s`` does it when a timeout is
configured (the tick is not how completions are detected).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import aiohttp
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.types import (
    AttemptedRollout,
    AttemptStatus,
    EnqueueRolloutRequest,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
)

from agl_tinker.store_server import MAX_WAIT_ANY_S, WAIT_ANY_PATH, WaitAnyResponse, completion_events

__all__ = [
    "DEADLINE_METADATA_KEY",
    "BatchResult",
    "DispatchConfig",
    "DispatchError",
    "DispatchProgress",
    "DispatchStats",
    "FinalStatus",
    "GroupResult",
    "ProcessError",
    "RolloutOutcome",
    "RolloutsLost",
    "StoreCallError",
    "WaitStrategy",
    "dispatch_batch",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WaitStrategy = Literal["auto", "events", "wait_any", "long_poll"]
FinalStatus = Literal["succeeded", "failed", "cancelled", "timeout", "unresponsive"]

_CLIENT_MAX_WAIT_S = 0.1  # LightningStoreClient.wait_for_rollouts raises above this
_CANCEL_GRACE_S = 10.0  # after a batch timeout, how long the store may take to report cancellations
DEADLINE_METADATA_KEY = "agl_tinker_cut_by_deadline"
"""Set (``True``) in the metadata of the rollout copy ``process`` gets for a rollout ended by
``stall_timeout_s``; the store's record is not changed beyond its cancellation."""
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    aiohttp.ClientError,
)


class DispatchError(RuntimeError):
    """The batch could not be dispatched or collected."""


class StoreCallError(DispatchError):
    """A store call kept failing with transient errors after all retries."""


class RolloutsLost(DispatchError):
    """The store no longer knows rollouts this batch enqueued (it was restarted, or replaced)."""


class ProcessError(DispatchError):
    """The ``process`` callable raised on a rollout (the cause is chained)."""

    def __init__(self, rollout_id: str, message: str) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


@dataclass(frozen=True)
class DispatchConfig:
    """How one batch is run. Timeouts and retries per rollout live in ``rollout_config``.

    Attributes:
        mode: rollout mode recorded in the store (``"train"`` or ``"val"``).
        resources_id: resources snapshot to run against; ``None`` lets the store pick the latest.
        rollout_config: per-rollout ``timeout_seconds``/``unresponsive_seconds``/``max_attempts``/
            ``retry_condition``, applied by the store's watchdog.
        max_in_flight: most rollouts enqueued and unfinished at once; ``None`` enqueues all.
        batch_timeout_s: after this, unfinished rollouts are cancelled in the store and
            not-yet-enqueued ones are skipped, so a batch with no live runner still ends.
        stall_timeout_s: when no rollout has finished for this long, the batch ends the same way,
            but its unfinished rollouts count as ``timeout`` (``RolloutOutcome.cut_by_deadline``;
            ``process`` sees them failed, with :data:`DEADLINE_METADATA_KEY` set in their
            metadata). Set it above the longest a healthy rollout can take to finish (its
            timeout times its attempts): past that, nothing is making progress (runners hung,
            dead or gone), and without it such a batch would wait forever.
        wait: ``"auto"`` picks ``events`` for an in-process in-memory store, ``wait_any`` for a
            ``LightningStoreClient`` (falling back to ``long_poll`` when its server lacks the
            route, as a stock ``agl store`` does), else ``long_poll``.
        long_poll_s: server-side block per long-poll request (clamped to 0.1 s for the client).
        long_poll_slots: long-poll requests open at once; each holds one server executor thread.
        watchdog_s: how often the store gets a call that runs its timeout watchdog: the tick of
            ``events`` mode, and the server-side block of each ``wait_any`` request.
        store_retries: retries of a store call that failed with a transient (network) error.
        metadata: extra rollout metadata (``group_index`` and ``group_slot`` are always added).
        before_read: awaited before the spans of finished rollouts are read. Pass the endpoint's
            ``flush``: it records a call's span off the request path, so a rollout can finish
            before the span of its last call reaches the store; every call of a finished rollout
            was answered (hence recorded) before it finished, so a flush begun after the store
            reports it finished covers them all.
    """

    mode: RolloutMode = "train"
    resources_id: str | None = None
    rollout_config: RolloutConfig | None = None
    max_in_flight: int | None = None
    batch_timeout_s: float | None = None
    stall_timeout_s: float | None = None
    wait: WaitStrategy = "auto"
    long_poll_s: float = 0.1
    long_poll_slots: int = 4
    watchdog_s: float = 1.0
    store_retries: int = 3
    metadata: Mapping[str, Any] | None = None
    before_read: Callable[[], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 or None, got {self.max_in_flight}")
        if self.long_poll_slots < 1:
            raise ValueError(f"long_poll_slots must be >= 1, got {self.long_poll_slots}")
        if self.long_poll_s <= 0 or self.watchdog_s <= 0:
            raise ValueError("long_poll_s and watchdog_s must be positive")
        if self.batch_timeout_s is not None and self.batch_timeout_s <= 0:
            raise ValueError(f"batch_timeout_s must be positive or None, got {self.batch_timeout_s}")
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be positive or None, got {self.stall_timeout_s}")
        if self.store_retries < 0:
            raise ValueError(f"store_retries must be >= 0, got {self.store_retries}")


@dataclass(frozen=True)
class DispatchProgress:
    """Snapshot passed to the progress callback after every change."""

    total: int
    done: int
    in_flight: int
    not_started: int


@dataclass(frozen=True)
class RolloutOutcome(Generic[T]):
    """One finished rollout and what ``process`` made of it."""

    rollout_id: str
    group_index: int
    slot: int
    status: RolloutStatus
    attempt_status: AttemptStatus | None
    n_attempts: int
    n_spans: int
    n_duplicate_spans: int
    result: T
    end_time: float | None
    ready_time: float
    noticed_time: float | None = None
    cut_by_deadline: bool = False
    """Ended by ``stall_timeout_s``, not by its runner or the store: counts as ``timeout``."""

    @property
    def final_status(self) -> FinalStatus:
        """``status``, refined to ``timeout``/``unresponsive`` when that is why it failed."""
        if self.status == "succeeded":
            return "succeeded"
        if self.cut_by_deadline:
            return "timeout"
        if self.status == "failed":
            if self.attempt_status == "timeout":
                return "timeout"
            if self.attempt_status == "unresponsive":
                return "unresponsive"
            return "failed"
        return "cancelled"  # cancelled, or a non-terminal status left behind by a batch deadline

    @property
    def overhead_s(self) -> float | None:
        """Bridge overhead: from the store marking the rollout finished to its result being ready."""
        return None if self.end_time is None else self.ready_time - self.end_time

    @property
    def detect_s(self) -> float | None:
        """The part of ``overhead_s`` before the dispatcher learned the rollout had finished."""
        if self.end_time is None or self.noticed_time is None:
            return None
        return self.noticed_time - self.end_time

    @property
    def read_s(self) -> float | None:
        """The rest of ``overhead_s``: reading the rollout and its spans, and ``process``."""
        return None if self.noticed_time is None else self.ready_time - self.noticed_time


@dataclass(frozen=True)
class GroupResult(Generic[T]):
    """The rollouts of one task, in slot order (fewer than group_size if the batch timed out)."""

    group_index: int
    task: Mapping[str, Any]
    outcomes: tuple[RolloutOutcome[T], ...]

    @property
    def results(self) -> list[T]:
        return [o.result for o in self.outcomes]


@dataclass(frozen=True)
class DispatchStats:
    """Where the time of a batch went; ``overheads_s`` are per rollout (see ``RolloutOutcome``)."""

    n_rollouts: int
    n_skipped: int
    status_counts: Mapping[str, int]
    wall_s: float
    enqueue_s: float
    wait_s: float
    process_s: float
    max_in_flight: int
    overheads_s: tuple[float, ...] = field(repr=False)
    detects_s: tuple[float, ...] = field(default=(), repr=False)
    reads_s: tuple[float, ...] = field(default=(), repr=False)
    wait: str = ""
    """How completions were learned by the end of the batch: ``events``, ``wait_any`` or ``long_poll``."""

    def overhead_ms(self, quantile: float) -> float | None:
        """Nearest-rank quantile of the per-rollout overhead, in milliseconds."""
        return _quantile_ms(self.overheads_s, quantile)

    def detect_ms(self, quantile: float) -> float | None:
        """Nearest-rank quantile of the overhead's detection part (``RolloutOutcome.detect_s``)."""
        return _quantile_ms(self.detects_s, quantile)

    def read_ms(self, quantile: float) -> float | None:
        """Nearest-rank quantile of the overhead's read-and-process part (``RolloutOutcome.read_s``)."""
        return _quantile_ms(self.reads_s, quantile)

    def summary(self) -> dict[str, Any]:
        """Flat numbers for logging."""
        return {
            "rollouts": self.n_rollouts,
            "skipped": self.n_skipped,
            **{f"status/{k}": v for k, v in sorted(self.status_counts.items())},
            "time/wall_s": self.wall_s,
            "time/enqueue_s": self.enqueue_s,
            "time/wait_s": self.wait_s,
            "time/process_s": self.process_s,
            "overhead_ms/p50": self.overhead_ms(0.5),
            "overhead_ms/p99": self.overhead_ms(0.99),
            "overhead_ms/detect_p50": self.detect_ms(0.5),
            "overhead_ms/read_p50": self.read_ms(0.5),
            "max_in_flight": self.max_in_flight,
        }


@dataclass(frozen=True)
class BatchResult(Generic[T]):
    groups: tuple[GroupResult[T], ...]
    stats: DispatchStats

    @property
    def outcomes(self) -> list[RolloutOutcome[T]]:
        return [o for g in self.groups for o in g.outcomes]


async def dispatch_batch(
    store: LightningStore,
    tasks: Sequence[Mapping[str, Any]],
    group_size: int,
    process: Callable[[Rollout, Sequence[Span]], T],
    *,
    config: DispatchConfig | None = None,
    on_progress: Callable[[DispatchProgress], None] | None = None,
) -> BatchResult[T]:
    """Run every task ``group_size`` times through ``store`` and process each finished rollout.

    ``process(rollout, spans)`` receives the finished rollout (an ``AttemptedRollout`` carrying
    the latest attempt, unless it never started) and the spans of its latest attempt, deduplicated
    by span id and ordered by sequence id. It is called for every terminal status, including
    failed, timed-out and cancelled rollouts, so exclusions are decided (and counted) there.

    Raises:
        ProcessError: ``process`` raised; unfinished rollouts are cancelled in the store first.
        StoreCallError: a store call kept failing after ``store_retries`` retries.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    run = _Dispatch(store, tasks, group_size, process, config or DispatchConfig(), on_progress)
    return await run.run()


# --------------------------------------------------------------------------------------------- internals


class _NoWaitAny(Exception):
    """The store server has no wait-for-any route (404 or 405): it is not a ``LeanStoreServer``."""


class _Caller:
    """Store calls with bounded retries on transient (network) errors."""

    def __init__(self, retries: int) -> None:
        self.retries = retries

    async def __call__(self, what: str, fn: Callable[[], Awaitable[R]]) -> R:
        delay = 0.02
        for attempt in range(self.retries + 1):
            try:
                return await fn()
            except _TRANSIENT_ERRORS as e:
                if attempt == self.retries:
                    raise StoreCallError(f"store call {what} failed {attempt + 1} times: {e!r}") from e
                logger.warning("store call %s failed (%r); retry %d/%d", what, e, attempt + 1, self.retries)
                await asyncio.sleep(delay)  # ok: exponential backoff between retries of a failed call
                delay *= 2
        raise AssertionError("unreachable")


class _CompletionWatcher:
    """Turns "rollout X reached a terminal status" into a queue of rollout ids, once per id."""

    def __init__(self, store: LightningStore, cfg: DispatchConfig, call: _Caller) -> None:
        self._store = store
        self._call = call
        self._events = completion_events(store) if cfg.wait in ("auto", "events") else None
        if cfg.wait == "events" and self._events is None:
            raise DispatchError(
                f"wait='events' needs an in-process InMemoryLightningStore, got {type(store).__name__}"
            )
        self._wait_any = isinstance(store, LightningStoreClient) and (
            cfg.wait == "wait_any" or (cfg.wait == "auto" and self._events is None)
        )
        if cfg.wait == "wait_any" and not self._wait_any:
            raise DispatchError(f"wait='wait_any' needs a LightningStoreClient, got {type(store).__name__}")
        self._fallback = cfg.wait == "auto"  # to long-polling, when the server lacks wait-any
        slice_s = cfg.long_poll_s
        if isinstance(store, (LightningStoreClient, LightningStoreServer)):
            slice_s = min(slice_s, _CLIENT_MAX_WAIT_S)
        self._slice_s = slice_s
        self._n_slots = cfg.long_poll_slots
        rc = cfg.rollout_config
        self._needs_watchdog = rc is not None and (
            rc.timeout_seconds is not None or rc.unresponsive_seconds is not None
        )
        self._watchdog_s = cfg.watchdog_s
        self._queue: asyncio.Queue[str | BaseException] = asyncio.Queue()
        self._watching: set[str] = set()
        self.noticed: dict[str, float] = {}  # rollout id -> time.time() it was seen finished
        self._polled: deque[str] = deque()  # long-poll rotation order
        self._new_work = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: asyncio.Task[None] | None = None
        self.finished_rollouts: dict[str, Rollout] = {}
        """Finished rollouts that came with their completion (``wait_any``), for the reader to take."""

    @property
    def strategy(self) -> str:
        """How completions are learned: ``events``, ``wait_any`` or ``long_poll``."""
        if self._events is not None:
            return "events"
        return "wait_any" if self._wait_any else "long_poll"

    def watch(self, rollout_ids: Sequence[str]) -> None:
        for rid in rollout_ids:
            self._watching.add(rid)
            event = self._events.get(rid) if self._events is not None else None
            if event is not None:
                self._spawn(self._await_event(rid, event))
            else:
                self._polled.append(rid)
        if self._polled:
            self._new_work.set()
        if self._background is None:
            if self._wait_any:
                self._background = self._spawn(self._wait_any_loop())
            elif self._events is None:
                self._background = self._spawn(self._long_poll_loop())
            elif self._needs_watchdog or self._polled:
                self._background = self._spawn(self._watchdog_loop())

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

    async def _await_event(self, rid: str, event: Any) -> None:
        await event  # aiologic.Event is awaitable across threads and event loops, no executor thread
        self._mark(rid)

    async def _wait_any_loop(self) -> None:
        """Wait-for-any requests (``LeanStoreServer``) covering every rollout in flight.

        Each request blocks server-side until one of its rollouts finishes (or ``watchdog_s``
        passes) and brings the finished ones back with their latest attempts: a completion is seen
        one round trip after it happens, and the reader need not query the rollout again. Rollouts
        enqueued while a request is open get a request of their own; a returned request's
        unfinished rollouts join the next one. A server without the route answers 404 or 405: then
        this falls back to :meth:`_long_poll_loop` (``wait="auto"``) or fails (``wait="wait_any"``).
        """
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
            self._wait_any = False
        finally:
            for task in armed:
                task.cancel()
            await asyncio.gather(*armed, return_exceptions=True)
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

    async def _wait_any_once(self, ids: list[str]) -> None:
        client = self._store
        assert isinstance(client, LightningStoreClient)
        body = {"rollout_ids": ids, "timeout": min(self._watchdog_s, MAX_WAIT_ANY_S)}

        async def request() -> Any:
            try:
                # The client's own request path: its session, retries and health probes.
                return await client._request_json("post", WAIT_ANY_PATH, json=body)
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

    async def _long_poll_loop(self) -> None:
        """``long_poll_slots`` single-rollout long-polls, rotated over the rollouts in flight.

        A request that returns, finished or timed out, triggers one sweep of every rollout no
        slot is holding: ``wait_for_rollouts(timeout=0)`` never blocks, so it costs the server no
        thread. Watched rollouts are seen one round trip after they finish, the others at the
        next sweep, about every ``long_poll_s / long_poll_slots``. The first arming of several
        slots spreads their timeouts over (0, long_poll_s] so the slots, and sweeps, interleave.
        """
        armed: dict[asyncio.Task[bool], str] = {}
        try:
            while True:
                free = self._n_slots - len(armed)
                picks = self._next_unarmed(free, set(armed.values()))
                timeouts = _spread(self._slice_s, len(picks)) if not armed else [self._slice_s] * len(picks)
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


def _spread(slice_s: float, n: int) -> list[float]:
    """``n`` timeouts evenly over (0, slice_s], largest first, none above ``slice_s``.

    ``slice_s * k / n`` can round above ``slice_s`` (0.1 * 3 / 3 > 0.1), which the HTTP
    client refuses; scaling by ``k / n`` (exactly 1.0 for ``k == n``) cannot.
    """
    return [slice_s * ((n - i) / n) for i in range(n)]


class _Dispatch(Generic[T]):
    def __init__(
        self,
        store: LightningStore,
        tasks: Sequence[Mapping[str, Any]],
        group_size: int,
        process: Callable[[Rollout, Sequence[Span]], T],
        cfg: DispatchConfig,
        on_progress: Callable[[DispatchProgress], None] | None,
    ) -> None:
        self.store = store
        self.tasks = list(tasks)
        self.process = process
        self.cfg = cfg
        self.on_progress = on_progress
        self.call = _Caller(cfg.store_retries)
        # Group-major order: with a cap on rollouts in flight, whole groups finish early.
        self.slots = [(g, k) for g in range(len(self.tasks)) for k in range(group_size)]
        self.cap = cfg.max_in_flight or max(1, len(self.slots))
        self.next_slot = 0
        self.in_flight: dict[str, tuple[int, int]] = {}
        self.processing = 0
        self.outcomes: dict[tuple[int, int], RolloutOutcome[T]] = {}
        self.deadline_hit = False
        self.cut: set[str] = set()  # rollouts ended by the stall deadline: they count as timeout
        self.enqueue_s = self.wait_s = self.process_s = 0.0
        self.max_in_flight_seen = 0
        self.watcher: _CompletionWatcher | None = None

    async def run(self) -> BatchResult[T]:
        t0 = time.perf_counter()
        deadline = None if self.cfg.batch_timeout_s is None else t0 + self.cfg.batch_timeout_s
        last_progress = t0
        watcher = self.watcher = _CompletionWatcher(self.store, self.cfg, self.call)
        try:
            async with asyncio.TaskGroup() as tg:
                await self._refill(watcher)
                while self.in_flight:
                    timeout = (
                        _CANCEL_GRACE_S if self.deadline_hit else self._time_left(deadline, last_progress)
                    )
                    t = time.perf_counter()
                    try:
                        finished = await asyncio.wait_for(watcher.next_finished(), timeout)
                    except TimeoutError:
                        if self.deadline_hit:
                            raise DispatchError(
                                f"{len(self.in_flight)} rollouts cancelled at the batch deadline were never "
                                f"reported finished by the store within {_CANCEL_GRACE_S}s"
                            ) from None
                        await self._hit_deadline(stalled=deadline is None or time.perf_counter() < deadline)
                        continue
                    finally:
                        self.wait_s += time.perf_counter() - t
                    round_ = [(rid, self.in_flight.pop(rid)) for rid in finished if rid in self.in_flight]
                    if round_:
                        last_progress = time.perf_counter()
                        self.processing += len(round_)
                        tg.create_task(self._finish_round(round_))
                    await self._refill(watcher)
                    self._report()
        except BaseExceptionGroup as group:
            await self._abandon()
            raise _first_error(group)  # noqa: B904 - the error keeps its own cause; the group adds nothing
        except BaseException:
            await self._abandon()
            raise
        finally:
            await watcher.aclose()
        return self._result(time.perf_counter() - t0)

    def _time_left(self, deadline: float | None, last_progress: float) -> float | None:
        """Seconds until the batch deadline or the stall deadline, whichever is first (None: never)."""
        now = time.perf_counter()
        limits = [] if deadline is None else [deadline - now]
        if self.cfg.stall_timeout_s is not None:
            limits.append(last_progress + self.cfg.stall_timeout_s - now)
        return min(limits) if limits else None

    async def _refill(self, watcher: _CompletionWatcher) -> None:
        free = self.cap - len(self.in_flight)
        if self.deadline_hit or free <= 0 or self.next_slot >= len(self.slots):
            return
        slots = self.slots[self.next_slot : self.next_slot + free]
        requests = [
            EnqueueRolloutRequest(
                input=dict(self.tasks[g]),
                mode=self.cfg.mode,
                resources_id=self.cfg.resources_id,
                config=self.cfg.rollout_config,
                metadata={**(self.cfg.metadata or {}), "group_index": g, "group_slot": k},
            )
            for g, k in slots
        ]
        t = time.perf_counter()
        rollouts = await self.call(
            "enqueue_many_rollouts", lambda: self.store.enqueue_many_rollouts(requests)
        )
        self.enqueue_s += time.perf_counter() - t
        if len(rollouts) != len(requests):
            raise DispatchError(
                f"enqueue_many_rollouts returned {len(rollouts)} rollouts for {len(requests)}"
            )
        self.next_slot += len(slots)
        for rollout, slot in zip(rollouts, slots, strict=True):
            self.in_flight[rollout.rollout_id] = slot
        self.max_in_flight_seen = max(self.max_in_flight_seen, len(self.in_flight))
        watcher.watch([r.rollout_id for r in rollouts])
        self._report()

    async def _finish_round(self, items: list[tuple[str, tuple[int, int]]]) -> None:
        """Read and process the rollouts that finished together.

        Rollouts that came with their completion (``wait_any``) are final as they are; the others
        are read with one ``query_rollouts`` for the whole round (it returns each rollout with its
        latest attempt), alongside one ``query_spans`` per rollout: over HTTP that is one round
        trip per rollout instead of two, which matters when a burst of completions queues at the
        server.
        """
        t = time.perf_counter()
        if self.cfg.before_read is not None:
            await self.cfg.before_read()
        store = self.store
        given = self.watcher.finished_rollouts if self.watcher is not None else {}
        known = {rid: rollout for rid, _ in items if (rollout := given.pop(rid, None)) is not None}
        missing = [rid for rid, _ in items if rid not in known]
        rollouts: asyncio.Future[Sequence[Rollout]] | None = None
        if missing:
            rollouts = asyncio.ensure_future(
                self.call("query_rollouts", functools.partial(store.query_rollouts, rollout_id_in=missing))
            )
        try:
            async with asyncio.TaskGroup() as tg:
                for rid, slot in items:
                    tg.create_task(self._finish_one(rid, slot, known.get(rid), rollouts))
        finally:
            if rollouts is not None:
                rollouts.cancel()
        self.process_s += time.perf_counter() - t

    async def _finish_one(
        self,
        rid: str,
        slot: tuple[int, int],
        rollout: Rollout | None,
        rollouts: asyncio.Future[Sequence[Rollout]] | None,
    ) -> None:
        spans = await self.call("query_spans", functools.partial(self.store.query_spans, rid, "latest"))
        if rollout is None and rollouts is not None:
            rollout = next((r for r in await rollouts if r.rollout_id == rid), None)
        if rollout is None:
            raise StoreCallError(f"query_rollouts did not return finished rollout {rid}")
        unique, n_dup = _dedupe_spans(spans)
        cut = rid in self.cut and rollout.status != "succeeded" and rollout.status != "failed"
        if cut:
            rollout = _as_cut_by_deadline(rollout)
        try:
            result = self.process(rollout, unique)
        except Exception as e:
            raise ProcessError(
                rid, f"process() failed on rollout {rid} (task {slot[0]}, slot {slot[1]}): {e!r}"
            ) from e
        ready = time.time()
        attempt = rollout.attempt if isinstance(rollout, AttemptedRollout) else None
        self.outcomes[slot] = RolloutOutcome(
            rollout_id=rid,
            group_index=slot[0],
            slot=slot[1],
            status=rollout.status,
            attempt_status=attempt.status if attempt is not None else None,
            n_attempts=attempt.sequence_id if attempt is not None else 0,
            n_spans=len(unique),
            n_duplicate_spans=n_dup,
            result=result,
            end_time=rollout.end_time,
            ready_time=ready,
            noticed_time=self.watcher.noticed.get(rid) if self.watcher is not None else None,
            cut_by_deadline=cut,
        )
        self.processing -= 1
        self._report()

    async def _hit_deadline(self, stalled: bool) -> None:
        """Cancel what is still running so the store finishes it and the waiters wake up.

        ``stalled``: the stall deadline fired (not ``batch_timeout_s``): the cancelled rollouts
        count as timed out.
        """
        self.deadline_hit = True
        ids = list(self.in_flight)
        if stalled:
            self.cut.update(ids)
            logger.error(
                "no rollout finished for %.1fs (stall deadline): %d unfinished rollouts count as "
                "timeout, %d not started are skipped; are the runners alive, or stuck inside agents?",
                self.cfg.stall_timeout_s,
                len(ids),
                len(self.slots) - self.next_slot,
            )
        else:
            logger.warning(
                "batch timeout (%.1fs): cancelling %d unfinished rollouts, skipping %d not started",
                self.cfg.batch_timeout_s,
                len(ids),
                len(self.slots) - self.next_slot,
            )
        for rid in ids:
            await self.call(
                "update_rollout",
                functools.partial(self.store.update_rollout, rollout_id=rid, status="cancelled"),
            )

    async def _abandon(self) -> None:
        """On failure, cancel unfinished rollouts so runners do not pick up orphaned work."""
        ids = list(self.in_flight)
        if not ids:
            return
        try:
            async with asyncio.timeout(5.0):
                for rid in ids:
                    await self.store.update_rollout(rollout_id=rid, status="cancelled")
        except Exception as e:
            logger.warning("could not cancel %d unfinished rollouts after a failure: %r", len(ids), e)

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(
                DispatchProgress(
                    total=len(self.slots),
                    done=len(self.outcomes),
                    in_flight=len(self.in_flight) + self.processing,
                    not_started=len(self.slots) - self.next_slot,
                )
            )

    def _result(self, wall_s: float) -> BatchResult[T]:
        groups = tuple(
            GroupResult(
                group_index=g,
                task=self.tasks[g],
                outcomes=tuple(o for (gi, _), o in sorted(self.outcomes.items()) if gi == g),
            )
            for g in range(len(self.tasks))
        )
        counts: dict[str, int] = {}
        for o in self.outcomes.values():
            counts[o.final_status] = counts.get(o.final_status, 0) + 1
        overheads = tuple(o.overhead_s for o in self.outcomes.values() if o.overhead_s is not None)
        detects = tuple(o.detect_s for o in self.outcomes.values() if o.detect_s is not None)
        reads = tuple(o.read_s for o in self.outcomes.values() if o.read_s is not None)
        stats = DispatchStats(
            n_rollouts=self.next_slot,
            n_skipped=len(self.slots) - self.next_slot,
            status_counts=counts,
            wall_s=wall_s,
            enqueue_s=self.enqueue_s,
            wait_s=self.wait_s,
            process_s=self.process_s,
            max_in_flight=self.max_in_flight_seen,
            overheads_s=overheads,
            detects_s=detects,
            reads_s=reads,
            wait=self.watcher.strategy if self.watcher is not None else "",
        )
        return BatchResult(groups=groups, stats=stats)


def _as_cut_by_deadline(rollout: Rollout) -> Rollout:
    """A copy of ``rollout`` as ``process`` should judge it: failed, its attempt timed out."""
    update: dict[str, Any] = {
        "status": "failed",
        "metadata": {**(rollout.metadata or {}), DEADLINE_METADATA_KEY: True},
    }
    if isinstance(rollout, AttemptedRollout):
        update["attempt"] = rollout.attempt.model_copy(update={"status": "timeout"})
    return rollout.model_copy(update=update)


def _quantile_ms(values_s: Sequence[float], quantile: float) -> float | None:
    if not values_s:
        return None
    ordered = sorted(values_s)
    rank = min(len(ordered) - 1, max(0, round(quantile * (len(ordered) - 1))))
    return ordered[rank] * 1000.0


def _dedupe_spans(spans: Sequence[Span]) -> tuple[list[Span], int]:
    """Keep the first copy of each span id (a retried span write can land twice), by sequence id."""
    seen: set[str] = set()
    unique: list[Span] = []
    for span in spans:
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        unique.append(span)
    unique.sort(key=lambda s: s.sequence_id)
    return unique, len(spans) - len(unique)


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The most informative exception of a TaskGroup failure, unwrapped for the caller."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    for e in leaves:
        if not isinstance(e, asyncio.CancelledError):
            return e
    return leaves[0] if leaves else group
