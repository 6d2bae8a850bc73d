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

Use it wherever a ``LightningStoreServer`` would be: ``agl-tinker store`` (split mode, through
:mod:`agl_tinker.split_store`), and ``agl_tinker.algorithm.fit`` starts one for its runners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

import aiohttp
from agentlightning.store.base import LightningStore, is_finished
from agentlightning.store.client_server import (
    API_V1_AGL_PREFIX,
    API_V1_PREFIX,
    LightningStoreClient,
    LightningStoreServer,
)
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from agentlightning.types import AttemptedRollout, Rollout
from pydantic import BaseModel, Field
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

from agl_tinker.agl_internals import (
    client_request_json,
    drop_emptied_index_level,
    forget_rollout_bookkeeping,
    memory_store_completion_events,
    server_store_is_here,
)

__all__ = [
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
# The stock server's logger: users who turned its request log on keep getting it.
_server_logger = logging.getLogger("agentlightning.store.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WAIT_ANY_PATH = "/agl-tinker/waits/any"
"""The wait-for-any route, relative to ``/v1/agl`` (where ``LightningStoreClient`` sends requests)."""
RELEASE_PATH = "/agl-tinker/rollouts/release"
"""``POST {"rollout_ids": [...]}``: forget those finished rollouts (see :func:`release_rollouts`)."""
RUN_PATH = "/agl-tinker/run"
"""``GET`` answers ``{"run_id": ...}``: which run this server belongs to (``null`` for none)."""
MAX_WAIT_ANY_S = 10.0
"""Longest a wait-for-any request may block: bounds how long a handler outlives a gone client."""
_WATCH_TTL_S = 300.0  # an unfinished rollout's event watcher lapses after this; the next ask renews it


class WaitAnyRequest(BaseModel):
    rollout_ids: list[str]
    timeout: float = Field(ge=0, le=MAX_WAIT_ANY_S)


class WaitAnyResponse(BaseModel):
    finished: list[AttemptedRollout | Rollout]
    """The asked-for rollouts in a terminal status (each with its latest attempt, if any)."""
    unknown: list[str]
    """Asked-for ids the store does not know; the answer comes at once when there are any."""


class ReleaseRequest(BaseModel):
    rollout_ids: list[str]


class ReleaseResponse(BaseModel):
    released: list[str]
    """The asked-for rollouts that were finished and are gone now (unknown or unfinished ones stay)."""


def in_process_memory_store(store: LightningStore) -> InMemoryLightningStore | None:
    """The ``InMemoryLightningStore`` behind ``store`` when it lives in this process, else ``None``.

    ``None`` for any other store, and for a server whose store lives in another process.
    """
    inner: Any = store
    if isinstance(inner, LightningStoreServer):
        # A server owned by another process (or unpickled) holds no store: it forwards over HTTP.
        if not server_store_is_here(inner):
            return None
        inner = inner.store
    if isinstance(inner, LightningStoreThreaded):
        inner = inner.store
    return inner if isinstance(inner, InMemoryLightningStore) else None


def completion_events(store: LightningStore) -> Mapping[str, Any] | None:
    """The in-memory store's per-rollout completion events (``aiologic.Event``), when it lives here.

    ``None`` for any other store, and for a server whose store lives in another process.
    """
    inner = in_process_memory_store(store)
    return memory_store_completion_events(inner) if inner is not None else None


async def release_rollouts(store: LightningStore, rollout_ids: Sequence[str]) -> list[str] | None:
    """Forget finished rollouts: the rollout, its attempts, spans and bookkeeping; the ids released.

    A store otherwise keeps every rollout and span for its whole life, so a long run grows by a
    batch of them each step. Call this once a rollout's result is taken (trained on or excluded).
    Unfinished and unknown ids are left alone. Works on an in-memory store in this process (the
    one-click layout) and, over ``LightningStoreClient``, on a :class:`LeanStoreServer` in another
    (split mode: its :data:`RELEASE_PATH`). ``None`` when ``store`` cannot release (another kind
    of store, or a stock ``agl store`` server): the caller keeps going, the store keeps growing.
    """
    ids = list(dict.fromkeys(rollout_ids))
    if not ids:
        return []
    inner = in_process_memory_store(store)
    if inner is not None:
        return await release_from_memory_store(inner, ids)
    if isinstance(store, LightningStoreClient):
        try:
            answer = await client_request_json(store, "post", RELEASE_PATH, body={"rollout_ids": ids})
        except aiohttp.ClientResponseError as e:
            if e.status in (404, 405):  # not an agl-tinker store server
                return None
            raise
        return ReleaseResponse.model_validate(answer).released
    return None


async def release_from_memory_store(store: InMemoryLightningStore, rollout_ids: Sequence[str]) -> list[str]:
    """Delete finished rollouts and everything the in-memory store keeps for them.

    Agent-lightning 0.3.0's stores have no public delete. This uses the store's collections' own
    ``query`` / ``delete`` / ``pop`` under the store's locks, and, through
    :mod:`agl_tinker.agl_internals`, private attributes for the rest: the emptied per-rollout level
    of the collections' indexes, and the per-rollout bookkeeping ``InMemoryLightningStore`` keeps
    beside its collections (completion events, start times, span byte counts, running ids).
    """
    released: list[str] = []
    labels: Any = ["rollouts", "attempts", "spans", "span_sequence_ids"]
    async with store.collections.atomic(mode="rw", labels=labels) as collections:
        for rid in rollout_ids:
            rollout = await collections.rollouts.get({"rollout_id": {"exact": rid}})
            if rollout is None or not is_finished(rollout):
                continue
            for collection in (collections.spans, collections.attempts):
                items = await collection.query(filter={"rollout_id": {"exact": rid}})
                await collection.delete(list(items.items))
                drop_emptied_index_level(collection, rid)
            await collections.span_sequence_ids.pop(rid)
            await collections.rollouts.delete([rollout])
            forget_rollout_bookkeeping(store, rid)
            released.append(rid)
    return released


# The ``@app.middleware("http")`` functions of LightningStoreServer._setup_routes that
# StoreErrorsAsJson replaces. Any other BaseHTTPMiddleware (a metrics tracker's) is left alone.
_REPLACED = ("_app_exception_handler", "_log_time")


class StoreErrorsAsJson:
    """Plain ASGI twin of the stock server's two ``BaseHTTPMiddleware`` layers.

    For ``/v1/agl`` requests an unhandled exception becomes a 500 with
    ``{"detail", "error_type", "traceback"}`` (the client retries 5xx, and treats other errors as
    final), exactly as ``_app_exception_handler`` does; other paths re-raise. Each ``/v1/agl`` and
    ``/v1/traces`` request is logged at debug level with its status and duration, as
    ``_log_time`` does, only when that logger is enabled for debug.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        is_agl = path.startswith(API_V1_AGL_PREFIX)
        if not is_agl and not path.startswith(API_V1_PREFIX + "/traces"):
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if not is_agl or status:  # not ours to convert, or the response already began
                raise
            _server_logger.exception("Unhandled application error", exc_info=exc)
            payload = {
                "detail": "Internal server error",
                "error_type": type(exc).__name__,
                "traceback": traceback.format_exc(),
            }
            await JSONResponse(status_code=500, content=payload)(scope, receive, send_tracked)
        if _server_logger.isEnabledFor(logging.DEBUG):
            client = scope.get("client")
            who = f"{client[0]}:{client[1]}" if client else "unknown"
            _server_logger.debug(
                '%s - "%s %s HTTP/%s" %s in %.2f ms',
                who,
                scope.get("method"),
                path,
                scope.get("http_version"),
                status[0] if status else "?",
                (time.perf_counter() - start) * 1000,
            )


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
        self.replaced_middleware = self._replace_middleware()
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
        rollout's completion event fires, so a check costs O(ids) and a wait no thread.
        """
        events = self._events
        if events is None:  # the route is only registered with events; a direct call may lack them
            raise RuntimeError("wait_any needs an in-process in-memory store")
        ids = list(dict.fromkeys(request.rollout_ids))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        unknown = [rid for rid in ids if rid not in events]
        while True:
            signal = self._signal()  # taken before the check: a completion after it sets this one
            done = await self.wait_for_rollouts(rollout_ids=ids, timeout=0)
            remaining = deadline - loop.time()
            if done or unknown or remaining <= 0:
                break
            if self._watch(ids, events):
                continue  # one finished between the check and its watcher: check again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), remaining)
        finished: list[AttemptedRollout | Rollout] = []
        if done:
            finished = list(await self.query_rollouts(rollout_id_in=[r.rollout_id for r in done]))
        return WaitAnyResponse(finished=finished, unknown=unknown)

    def _signal(self) -> asyncio.Event:
        if self._finished_signal is None:
            self._finished_signal = asyncio.Event()
        return self._finished_signal

    def _watch(self, ids: list[str], events: Mapping[str, Any]) -> bool:
        """Start a watcher for each unwatched id; ``True`` if one's event is already set."""
        for rid in ids:
            if rid in self._watchers:
                continue
            event = events[rid]
            if event.is_set():
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

    def _replace_middleware(self) -> bool:
        app = self.app
        if app is None:
            return False
        stack = app.user_middleware
        names = [_dispatch_name(m) for m in stack]
        slots = [i for i, name in enumerate(names) if name in _REPLACED]
        if sorted(str(names[i]) for i in slots) != sorted(_REPLACED):
            logger.warning(
                "LeanStoreServer: this Agent-lightning's store server does not add the middlewares %s; "
                "serving it unchanged",
                _REPLACED,
            )
            return False
        kept = [m for i, m in enumerate(stack) if i not in slots]
        kept.insert(slots[0], Middleware(StoreErrorsAsJson))
        stack[:] = kept
        app.middleware_stack = None  # rebuilt from user_middleware on the first request
        return True


async def _awaited(event: Any) -> None:
    await event


def _dispatch_name(middleware: Middleware) -> str | None:
    if middleware.cls is not BaseHTTPMiddleware:
        return None
    dispatch = middleware.kwargs.get("dispatch")
    return getattr(dispatch, "__name__", None)
