"""The completion sources of a store behind HTTP: long-polling (``long_poll``) and agl-tinker's
wait-for-any route (``wait_any``, falling back to long-polling on a server without it)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer

from agl_tinker.agl_internals import client_request_json
from agl_tinker.dispatch.source_base import CLIENT_MAX_WAIT_S, NoWaitAny, SourceBase, spread_timeouts
from agl_tinker.dispatch.store_calls import StoreCaller
from agl_tinker.dispatch.types import DispatchConfig, DispatchError, RolloutsLost
from agl_tinker.store_routes import MAX_WAIT_ANY_S, WAIT_ANY_PATH, WaitAnyResponse

__all__ = ["LongPollSource", "WaitAnySource"]

logger = logging.getLogger(__name__)

R = TypeVar("R")


class LongPollSource(SourceBase):
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
                    task.result()  # re-raises a StoreCallError, or NoWaitAny
        except NoWaitAny:
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
                    raise NoWaitAny from e
                raise

        answer = WaitAnyResponse.model_validate(await self._call("wait_any", request))
        if answer.unknown:
            raise RolloutsLost(f"rollouts not in the store any more: {', '.join(answer.unknown[:5])}")
        for rollout in answer.finished:
            self.finished_rollouts[rollout.rollout_id] = rollout
            self._mark(rollout.rollout_id)
