"""Agent-lightning's store server, same HTTP API, without its per-request middleware cost.

Agent-lightning 0.3.0's ``LightningStoreServer`` wraps every request in two Starlette
``BaseHTTPMiddleware`` layers (``_app_exception_handler``: unhandled errors become a 500 JSON
body; ``_log_time``: a debug line per request). Each such layer runs the rest of the app in a new
task behind a memory stream, which costs more CPU than the route and the store together, so while a
batch of rollouts finishes every store call, the runners' own included, queues behind it.
``LeanStoreServer`` swaps the two layers for one plain ASGI middleware with the same behaviour (same
500 body, same debug line on the same logger); ``benchmarks/dispatch.py`` measures what that does to
the bridge overhead over HTTP. Routes, models, the store, the client and
everything else are Agent-lightning's own, so ``LightningStoreClient`` and ``agl`` runners talk to
it unchanged. uvicorn also parses HTTP with ``httptools`` when it is installed (a dependency of
this package).

It also answers one route of its own, ``POST /v1/agl/agl-tinker/waits/any``
(:data:`WAIT_ANY_PATH`): "return as soon as *any* of these rollouts has finished, with the
finished ones". Agent-lightning's ``wait_for_rollouts`` returns only when *all* ids finish, its
client refuses to block over 0.1 s, and its server holds one executor thread per waiting id; so a
remote algorithm had to rotate single-id long-polls and sweep the rest, learning of most
completions a sweep late. The route awaits the in-memory store's own completion events on the
server's event loop (no thread per id), answers one round trip after a completion, and hands the
finished rollouts (latest attempt included) back in the same answer. ``dispatch_batch`` uses it
when the server has it and falls back to long-polling against a stock ``agl store``.

The middleware is :mod:`agl_tinker.store_middleware`, the routes' paths and bodies
:mod:`agl_tinker.store_routes`, the release of finished rollouts :mod:`agl_tinker.store_release`.
Use it wherever a ``LightningStoreServer`` would be: ``agl-tinker store`` (split mode, through
:mod:`agl_tinker.split_store`), and ``agl_tinker.algorithm.fit`` starts one for its runners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from agentlightning.store.client_server import API_V1_AGL_PREFIX, LightningStoreServer
from agentlightning.types import AttemptedRollout, Rollout

from agl_tinker.store_middleware import StoreErrorsAsJson, replace_slow_middleware
from agl_tinker.store_release import completion_events, in_process_memory_store, release_rollouts
from agl_tinker.store_routes import (
    MAX_WAIT_ANY_S,
    RELEASE_PATH,
    RUN_PATH,
    WAIT_ANY_PATH,
    ReleaseRequest,
    ReleaseResponse,
    WaitAnyRequest,
    WaitAnyResponse,
)

__all__ = [  # the server, and (for callers that import them from here) what it serves and uses
    "MAX_WAIT_ANY_S",
    "RELEASE_PATH",
    "RUN_PATH",
    "WAIT_ANY_PATH",
    "LeanStoreServer",
    "ReleaseRequest",
    "ReleaseResponse",
    "StoreErrorsAsJson",
    "WaitAnyRequest",
    "WaitAnyResponse",
    "completion_events",
    "release_rollouts",
]

logger = logging.getLogger(__name__)

_WATCH_TTL_S = 300.0  # an unfinished rollout's event watcher lapses after this; the next ask renews it


class LeanStoreServer(LightningStoreServer):
    """``LightningStoreServer`` with :class:`StoreErrorsAsJson` in place of its two slow middlewares.

    Takes ``LightningStoreServer``'s arguments, plus ``run_id``: the run this server belongs to,
    served at :data:`RUN_PATH` so that runners started for a run can check they reached its store.
    If a future Agent-lightning no longer adds those two middlewares, nothing is replaced and a
    warning says so: the server still works, at the stock speed. Over a store with completion
    events (the in-memory one) it also serves :data:`WAIT_ANY_PATH`; over any other store that
    route is absent (404), as on a stock server.
    """

    def __init__(self, *args: Any, run_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_id = run_id
        self.replaced_middleware = replace_slow_middleware(self.app)
        self._events = completion_events(self.store) if self.store is not None else None
        # Both live on the server's event loop, where every request handler runs.
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._finished_signal: asyncio.Event | None = None
        if self.app is not None:
            self.app.add_api_route(API_V1_AGL_PREFIX + RUN_PATH, self.run_info, methods=["GET"])
            # Ahead of the stock server's GET catch-all (its dashboard's page fallback).
            routes = self.app.router.routes
            routes.insert(0, routes.pop())
        if self.app is not None and in_process_memory_store(self) is not None:
            self.app.add_api_route(
                API_V1_AGL_PREFIX + RELEASE_PATH,
                self.release,
                methods=["POST"],
                response_model=ReleaseResponse,
            )
        if self.app is not None and self._events is not None:
            self.app.add_api_route(
                API_V1_AGL_PREFIX + WAIT_ANY_PATH,
                self.wait_any,
                methods=["POST"],
                response_model=WaitAnyResponse,
            )

    async def release(self, request: ReleaseRequest) -> ReleaseResponse:
        """The :data:`RELEASE_PATH` route: :func:`release_rollouts` on the store served here."""
        released = await release_rollouts(self, request.rollout_ids)
        return ReleaseResponse(released=released or [])

    async def run_info(self) -> dict[str, str | None]:
        """The body of :data:`RUN_PATH`."""
        return {"run_id": self.run_id}

    async def wait_any(self, request: WaitAnyRequest) -> WaitAnyResponse:
        """Block until any of ``request.rollout_ids`` is finished or ``request.timeout`` passes.

        Each check is the store's own ``wait_for_rollouts(timeout=0)``, which also runs its
        ``RolloutConfig`` watchdog. Between checks the request sleeps on a server-wide signal that
        a watcher task per asked-for rollout (one per rollout, shared by requests) raises when the
        rollout's completion event fires, so a check costs O(ids) and a wait no thread. A rollout
        released (:data:`RELEASE_PATH`) before or while the request waits is gone: it is reported in
        ``unknown``, which ends the wait like a finished one.
        """
        events = self._events
        if events is None:  # the route is only registered with events; a direct call may lack them
            raise RuntimeError("wait_any needs an in-process in-memory store")
        ids = list(dict.fromkeys(request.rollout_ids))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        while True:
            signal = self._signal()  # taken before the check: a completion after it sets this one
            done = await self.wait_for_rollouts(rollout_ids=ids, timeout=0)
            unknown = _unknown(ids, events)  # after the check: one released while it ran is gone
            remaining = deadline - loop.time()
            if done or unknown or remaining <= 0:
                break
            if self._watch(ids, events):
                continue  # one finished or was released since the check: check again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), remaining)
        finished: list[AttemptedRollout | Rollout] = []
        if done:
            finished = list(await self.query_rollouts(rollout_id_in=[r.rollout_id for r in done]))
            answered = {r.rollout_id for r in finished}  # one released since the check is gone too
            unknown = [rid for rid in _unknown(ids, events) if rid not in answered]
        return WaitAnyResponse(finished=finished, unknown=unknown)

    def _signal(self) -> asyncio.Event:
        if self._finished_signal is None:
            self._finished_signal = asyncio.Event()
        return self._finished_signal

    def _watch(self, ids: list[str], events: Mapping[str, Any]) -> bool:
        """Start a watcher for each unwatched id; ``True`` if one's event is set or gone (released).

        Either way the caller checks again, and its next check reports a released id as unknown.
        """
        for rid in ids:
            if rid in self._watchers:
                continue
            event = events.get(rid)
            if event is None or event.is_set():
                return True
            self._watchers[rid] = asyncio.create_task(self._watch_one(rid, event))
        return False

    async def _watch_one(self, rid: str, event: Any) -> None:
        try:
            # aiologic.Event is awaitable from any loop and thread, without an executor thread
            await asyncio.wait_for(_awaited(event), _WATCH_TTL_S)
        except TimeoutError:
            return
        finally:
            self._watchers.pop(rid, None)
        signal, self._finished_signal = self._signal(), asyncio.Event()
        signal.set()


def _unknown(ids: list[str], events: Mapping[str, Any]) -> list[str]:
    """The ids the store does not know (never enqueued, or released since): no completion event."""
    return [rid for rid in ids if rid not in events]


async def _awaited(event: Any) -> None:
    await event
