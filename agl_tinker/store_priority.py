"""Running rollouts first: the store server serves a runner's polls after the work of rollouts in flight.

A saturated store serves its requests first come, first served (``docs/scaling.md``: measured fair,
p99 near the mean). So a rollout that is already running, whose runner now writes its reward and
closes its attempt, waits behind every poll of an idle runner that arrived before it: in a step's
tail, a thousand idle runners polling an empty queue hold up the last rollouts the step waits for,
and a rollout's ``timeout_seconds`` (counted from its dequeue) runs while it waits.

:class:`RunningRolloutsFirst` is a plain ASGI middleware that lets at most ``slots`` store requests
into the app at once and, when more are waiting, admits the others (span writes, attempt updates,
resources, queries) before dequeues. It changes no answer, only the order in which waiting
requests run; a dequeue waits only while other work is waiting, so polls are served whenever the
rollouts in flight leave the store a moment. Long polls (``/waits/...``, which may block for
seconds) bypass it, and so does everything outside ``/v1/agl``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from agentlightning.store.client_server import API_V1_AGL_PREFIX

__all__ = ["DEFAULT_SLOTS", "DEQUEUE_PATH", "RunningRolloutsFirst"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_SLOTS = 16
"""Store requests in the app at once: enough to overlap their few awaits, few enough that the
order of admission is the order of service."""
DEQUEUE_PATH = API_V1_AGL_PREFIX + "/queues/rollouts/dequeue"
_LONG_POLLS = (API_V1_AGL_PREFIX + "/waits/", API_V1_AGL_PREFIX + "/agl-tinker/waits/")
_WORK, _POLL = 0, 1  # admission order: lower first


class RunningRolloutsFirst:
    """ASGI middleware: at most ``slots`` ``/v1/agl`` requests in ``app``; waiting dequeues go last.

    Among waiting requests of one kind, first come, first served. ``admitted`` counts the
    requests let in, per kind (``"work"``, ``"poll"``); ``waiting`` is how many wait now.
    """

    def __init__(self, app: ASGIApp, slots: int = DEFAULT_SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.app = app
        self.slots = slots
        self._active = 0
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.admitted = {"work": 0, "poll": 0}

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(API_V1_AGL_PREFIX) or path.startswith(_LONG_POLLS):
            await self.app(scope, receive, send)
            return
        kind = _POLL if path == DEQUEUE_PATH else _WORK
        await self._acquire(kind)
        try:
            await self.app(scope, receive, send)
        finally:
            self._release()

    async def _acquire(self, kind: int) -> None:
        if self._active < self.slots and not self._queue:
            self._active += 1
        else:
            entry = (kind, next(self._order), asyncio.get_running_loop().create_future())
            heapq.heappush(self._queue, entry)
            try:
                await entry[2]  # the slot is handed over by _release (self._active unchanged)
            except asyncio.CancelledError:
                if entry in self._queue:  # still waiting: leave the line
                    self._queue.remove(entry)
                    heapq.heapify(self._queue)
                else:  # handed a slot just as it was cancelled: pass it on
                    self._release()
                raise
        self.admitted["poll" if kind == _POLL else "work"] += 1

    def _release(self) -> None:
        if self._queue:
            heapq.heappop(self._queue)[2].set_result(None)
        else:
            self._active -= 1
