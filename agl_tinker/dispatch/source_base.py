"""What every completion source (:mod:`agl_tinker.dispatch.completion`) shares: the watched set,
the output queue, background tasks whose errors surface from ``next_finished``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from agentlightning.store.base import LightningStore
from agentlightning.types import Rollout

from agl_tinker.dispatch.store_calls import StoreCaller

__all__ = ["CLIENT_MAX_WAIT_S", "NoWaitAny", "SourceBase", "spread_timeouts"]

CLIENT_MAX_WAIT_S = 0.1
"""``LightningStoreClient.wait_for_rollouts`` raises for a longer timeout."""


def spread_timeouts(slice_s: float, n: int) -> list[float]:
    """``n`` timeouts evenly over (0, slice_s], largest first, none above ``slice_s``.

    ``slice_s * k / n`` can round above ``slice_s`` (0.1 * 3 / 3 > 0.1), which the HTTP
    client refuses; scaling by ``k / n`` (exactly 1.0 for ``k == n``) cannot.
    """
    return [slice_s * ((n - i) / n) for i in range(n)]


class NoWaitAny(Exception):
    """The store server has no wait-for-any route (404 or 405): it is not a ``LeanStoreServer``."""


class SourceBase:
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
