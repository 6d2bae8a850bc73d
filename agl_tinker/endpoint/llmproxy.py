"""Compatibility mode: the same provider served by Agent-lightning's ``LLMProxy`` (LiteLLM proxy server).

Slower than the lean server (every call also goes through the LiteLLM proxy) but it is the reference
integration: its middleware rewrites rollout paths and allocates span sequence ids, and its
stream-conversion middleware serves ``stream=True``. Spans are written by :class:`ProxySpanLogger`,
a LiteLLM callback feeding the same :class:`SpanRecorder` and attribute schema as the lean server,
so both modes store the same calls (less what the lean server adds about the request itself: agent
name, tools offered, API; :func:`agl_tinker.spans.request_attributes`). The proxy runs on its own thread, hence the store must be
thread-safe (it is wrapped in ``LightningStoreThreaded`` when it is not).
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from agentlightning.llm_proxy import LLMProxy
from litellm.integrations.custom_logger import CustomLogger
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agl_tinker.endpoint.chat_request import NESTED_TOO_DEEPLY, BadRequest
from agl_tinker.endpoint.generation import generation_from_response, span_attributes
from agl_tinker.endpoint.provider import TinkerChatProvider
from agl_tinker.endpoint.request_scope import llmproxy_rollout_headers
from agl_tinker.endpoint.span_recorder import CallRecord, SpanRecorder
from agl_tinker.endpoint.wire import openai_error_body
from agl_tinker.net import free_port

_PROVIDERS: dict[str, TinkerChatProvider] = {}
"""Served model name -> provider, for :class:`RequestGuard` (middleware classes take no arguments)."""


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse(openai_error_body(message), status_code=400)


class RequestGuard(BaseHTTPMiddleware):
    """Validates a chat request with the provider's own parser before LiteLLM's proxy sees it.

    LLMProxy's stream-conversion middleware and LiteLLM's message handling fail with a 500 on some
    malformed bodies (a list body, non-text content); this gives both modes the same 400s.
    """

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.method == "POST" and request.url.path.endswith("/chat/completions"):
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError):
                return _bad_request("request body must be valid JSON")
            except RecursionError:  # json.loads recurses once per nesting level
                return _bad_request(NESTED_TOO_DEEPLY)
            if not isinstance(body, dict):
                return _bad_request("request body must be a JSON object")
            provider = _PROVIDERS.get(str(body.get("model")))
            if provider is not None:
                try:
                    provider.parse(body)
                except BadRequest as exc:
                    return _bad_request(str(exc))
        return await call_next(request)


class ProxySpanLogger(CustomLogger):
    """LiteLLM success callback that records our provider's answers; one class for all proxies.

    LLMProxy instantiates callback classes itself and keeps them for the process, so recorders are
    looked up per call by the LiteLLM model string each provider was registered under.
    """

    recorders: ClassVar[dict[str, tuple[SpanRecorder, str]]] = {}

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        model = str((kwargs.get("litellm_params") or {}).get("model") or kwargs.get("model") or "")
        target = self.recorders.get(model) or next(
            (v for k, v in self.recorders.items() if k.endswith("/" + model) or k.split("/", 1)[-1] == model),
            None,
        )
        headers = llmproxy_rollout_headers(kwargs.get("litellm_params"))
        if target is None or not headers.get("x-rollout-id") or not headers.get("x-attempt-id"):
            return
        recorder, served_model = target
        sequence = headers.get("x-sequence-id", "")
        recorder.record(
            CallRecord(
                rollout_id=headers["x-rollout-id"],
                attempt_id=headers["x-attempt-id"],
                attributes=span_attributes(
                    generation_from_response(response_obj), kwargs.get("messages") or [], served_model
                ),
                start_time=start_time.timestamp(),
                end_time=end_time.timestamp(),
                sequence_id=int(sequence) if sequence.isdigit() else None,
            )
        )


class ProxyServer:
    """The provider behind Agent-lightning's ``LLMProxy`` (thread launch mode)."""

    def __init__(
        self,
        provider: TinkerChatProvider,
        litellm_model: str,
        served_model: str,
        *,
        store: Any,
        recorder: SpanRecorder,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.provider = provider
        self.litellm_model = litellm_model
        self.served_model = served_model
        self.recorder = recorder
        # LiteLLM's proxy refuses to start without a master key unless told the endpoint is local.
        os.environ.setdefault("LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY", "true")
        self.proxy = LLMProxy(
            port=port or free_port(host),
            host=host,
            model_list=[{"model_name": served_model, "litellm_params": {"model": litellm_model}}],
            store=store,
            launch_mode="thread",
            # Starlette runs the last-added middleware first: the guard sees the raw body.
            middlewares=["rollout_attempt", "stream_conversion", RequestGuard],
            callbacks=[ProxySpanLogger],
        )

    @property
    def url(self) -> str:
        return self.proxy.server_launcher.access_endpoint

    async def start(self) -> None:
        """Register the provider and start the proxy; a failed start undoes both (:meth:`stop`)."""
        await self.recorder.start()
        ProxySpanLogger.recorders[self.litellm_model] = (self.recorder, self.served_model)
        _PROVIDERS[self.served_model] = self.provider
        try:
            await self.proxy.start()
        except BaseException:
            await self.stop()
            raise

    async def flush(self) -> None:
        await self.recorder.flush()

    async def stop(self) -> None:
        if self.proxy.is_running():
            await self.proxy.stop()
        ProxySpanLogger.recorders.pop(self.litellm_model, None)
        if _PROVIDERS.get(self.served_model) is self.provider:
            del _PROVIDERS[self.served_model]
        await self.recorder.close()
