"""The store server's one plain ASGI middleware, in place of Agent-lightning's two slow ones.

Agent-lightning 0.3.0's ``LightningStoreServer`` wraps every request in two Starlette
``BaseHTTPMiddleware`` layers (``_app_exception_handler``: unhandled errors become a 500 JSON
body; ``_log_time``: a debug line per request). Each such layer runs the rest of the app in a new
task behind a memory stream, which costs more CPU than the route and the store together.
:func:`replace_slow_middleware` swaps them for :class:`StoreErrorsAsJson`: same behaviour (same 500
body, same debug line on the same logger; a store's refusal is a 400, see the class), no task per request.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from agentlightning.store.client_server import API_V1_AGL_PREFIX, API_V1_PREFIX
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

__all__ = ["StoreErrorsAsJson", "replace_slow_middleware"]

logger = logging.getLogger("agl_tinker.store_server")
# The stock server's logger: users who turned its request log on keep getting it.
_server_logger = logging.getLogger("agentlightning.store.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The ``@app.middleware("http")`` functions of LightningStoreServer._setup_routes that
# StoreErrorsAsJson replaces. Any other BaseHTTPMiddleware (a metrics tracker's) is left alone.
_REPLACED = ("_app_exception_handler", "_log_time")


class StoreErrorsAsJson:
    """Plain ASGI twin of the stock server's two ``BaseHTTPMiddleware`` layers.

    For ``/v1/agl`` requests an unhandled exception becomes a 500 with
    ``{"detail", "error_type", "traceback"}`` (the client retries 5xx, and treats other errors as
    final), exactly as ``_app_exception_handler`` does; other paths re-raise. One difference: a
    ``ValueError``, which is how Agent-lightning's stores refuse a request (a span or status for a
    rollout or attempt they do not hold: released, or never enqueued), becomes a 400 with the
    store's message as ``detail``. The stock server answers 500, so its client retries a refusal
    that cannot succeed and then fails the whole call: for the endpoint's span writer, a batch of
    up to 512 calls of live rollouts lost to one late call of a released one. A 400 is what
    ``LightningStoreClient`` documents as "do not retry", and the writer then stores the batch span
    by span and counts the one refused. Each ``/v1/agl`` and
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
            if isinstance(exc, ValueError):  # the store refused the request: final, not a failure
                logger.debug("store refused %s %s: %s", scope.get("method"), path, exc)
                refused = {"detail": str(exc), "error_type": type(exc).__name__}
                await JSONResponse(status_code=400, content=refused)(scope, receive, send_tracked)
            else:
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


def replace_slow_middleware(app: Any) -> bool:
    """Swap the stock server's two ``BaseHTTPMiddleware`` layers in ``app`` (its FastAPI app) for
    :class:`StoreErrorsAsJson`; ``False``, with a warning, if this
    Agent-lightning does not add them (the server then works unchanged, at the stock speed)."""
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


def _dispatch_name(middleware: Middleware) -> str | None:
    if middleware.cls is not BaseHTTPMiddleware:
        return None
    dispatch = middleware.kwargs.get("dispatch")
    return getattr(dispatch, "__name__", None)
