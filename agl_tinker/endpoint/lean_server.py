"""Lean OpenAI-compatible server: aiohttp in front of the LiteLLM provider, called in-process.

By default the server calls the provider's ``generate`` (what LiteLLM's ``CustomLLM.acompletion``
runs) and builds the JSON body directly (:func:`agl_tinker.endpoint.generation.completion_dict`),
skipping ``litellm.acompletion``'s generic dispatch: with the pinned LiteLLM that dispatch (a thread
hop, logging payloads, cost lookups) costs more per call than the rest of the endpoint together
(``benchmarks/endpoint.py``). ``litellm_dispatch=True`` routes every call through
``litellm.acompletion`` instead, for users whose LiteLLM callbacks must see the calls.

Serves ``/v1/chat/completions`` and the rollout-attributed ``/rollout/{rid}/attempt/{aid}/v1/...``
paths Agent-lightning's LLMProxy serves, plus ``/v1/models`` and ``/health``. It runs on its own
thread and event loop, so synchronous agents in the same process (and tests) can call it, and hands
calls on rollout paths to a :class:`SpanRecorder` that stores them after the answer has gone out.
``stream=True`` is served as OpenAI SSE chunks of the finished answer: the sampler returns whole
sequences, and recording needs the whole token list anyway.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Iterator, Mapping
from typing import Any

import litellm
from aiohttp import web
from litellm.types.utils import ModelResponse

from agl_tinker.endpoint.chat_request import BadRequest
from agl_tinker.endpoint.generation import completion_dict, generation_from_response, span_attributes
from agl_tinker.endpoint.provider import InvalidChatRequest, TinkerChatProvider
from agl_tinker.endpoint.request_scope import TITO_SCOPE
from agl_tinker.endpoint.span_recorder import CallRecord, SpanRecorder
from agl_tinker.spans import AGENT_NAME_HEADER, request_attributes

logger = logging.getLogger(__name__)

_NOT_FORWARDED = frozenset({"model", "messages", "stream", "stream_options", "metadata"})


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    """An OpenAI-shaped error body (the ``openai`` client reads ``error.message``)."""
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status
    )


def sse_chunks(completion: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """The finished completion as OpenAI ``chat.completion.chunk`` events, ending with ``[DONE]``.

    The last chunk also carries the token extras (``token_ids``, ``prompt_token_ids``) so a client
    reading the stream sees the same ids a non-streaming answer has.
    """
    choice = completion["choices"][0]
    message = choice["message"]
    base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    if message.get("content"):
        deltas.append({"content": message["content"]})
    if message.get("tool_calls"):
        deltas.append({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]})
    for delta in deltas:
        yield event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **usage_field})
    last_choice = {
        "index": 0,
        "delta": {},
        "finish_reason": choice["finish_reason"],
        "logprobs": choice.get("logprobs"),
        "token_ids": choice.get("token_ids"),
        "token_logprobs": choice.get("token_logprobs"),
    }
    extras: dict[str, Any] = {
        k: completion[k] for k in ("prompt_token_ids", "weights_version") if k in completion
    }
    yield event({**base, "choices": [last_choice], **usage_field, **extras})
    if include_usage:
        yield event({**base, "choices": [], "usage": completion["usage"]})
    yield b"data: [DONE]\n\n"


class LeanServer:
    """The default endpoint server. ``start()``/``stop()``/``flush()`` may be awaited from any loop."""

    def __init__(
        self,
        provider: TinkerChatProvider,
        litellm_model: str,
        served_model: str,
        *,
        recorder: SpanRecorder | None,
        host: str = "127.0.0.1",
        port: int = 0,
        model_aliases: tuple[str, ...] = (),
        litellm_dispatch: bool = False,
        routes: Mapping[str, TinkerChatProvider] | None = None,
    ) -> None:
        if routes and litellm_dispatch:
            raise ValueError("routes (several policies) cannot be combined with litellm_dispatch")
        self.provider = provider
        self.routes: dict[str, TinkerChatProvider] = dict(routes or {})
        """``model`` name -> the provider that answers it (several policies); others: ``provider``."""
        self.litellm_dispatch = litellm_dispatch
        self.litellm_model = litellm_model
        self.served_model = served_model
        self.accepted_models = frozenset((served_model, *model_aliases, *self.routes))
        self.recorder = recorder
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL (no ``/v1``), e.g. ``http://127.0.0.1:8123``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        caller = asyncio.get_running_loop()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:
                caller.call_soon_threadsafe(ready.set_exception, exc)
                return
            caller.call_soon_threadsafe(ready.set_result, None)
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=serve, name="agl-tinker-lean-server", daemon=True)
        self._thread.start()
        await ready

    async def _open(self) -> None:
        if self.recorder is not None:
            await self.recorder.start()
        app = self.make_app()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.recorder is not None:
            await self.recorder.close()

    async def _on_server_loop(self, coro: Awaitable[Any]) -> Any:
        if self._loop is None:
            raise RuntimeError("server is not running")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))  # type: ignore[arg-type]

    async def flush(self) -> None:
        """Wait until every call answered so far is stored."""
        if self.recorder is not None:
            await self._on_server_loop(self.recorder.flush())

    async def stop(self) -> None:
        """Stop serving; spans still buffered are stored first."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._loop = None
        self._thread = None

    # -- HTTP -----------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        for prefix in ("", "/rollout/{rollout_id}/attempt/{attempt_id}"):
            app.router.add_post(prefix + "/v1/chat/completions", self._chat)
            app.router.add_get(prefix + "/v1/models", self._models)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.served_model})

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "agl-tinker"}
            for name in sorted(self.accepted_models)
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.time()
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return openai_error(400, "request body must be valid JSON")
        if not isinstance(body, dict):
            return openai_error(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or model not in self.accepted_models:
            shown = repr(model) if isinstance(model, str) else f"of type {type(model).__name__}"
            return openai_error(400, f"'model' {shown} is not served here; use {self.served_model!r}")
        provider = self.routes.get(model, self.provider)
        try:
            parsed = provider.parse(body)
        except BadRequest as exc:
            return openai_error(400, str(exc))
        rollout_id = request.match_info.get("rollout_id")
        # token-in-token-out reuses only this attempt's own tokens
        scope = None if rollout_id is None else f"{rollout_id}/{request.match_info['attempt_id']}"
        try:
            if self.litellm_dispatch:
                response = await self._via_litellm(body, scope)
                response.model = model
                completion = response.model_dump()
                attributes = functools.partial(
                    span_attributes, generation_from_response(response), body["messages"], model
                )
            else:
                generation = await provider.generate(parsed, scope)
                completion = completion_dict(generation, model, provider.tokenizer, logprobs=parsed.logprobs)
                attributes = functools.partial(span_attributes, generation, body["messages"], model)
        except BadRequest as exc:
            return openai_error(400, str(exc))
        except InvalidChatRequest as exc:
            return openai_error(400, exc.detail)
        except litellm.BadRequestError as exc:
            return openai_error(400, str(exc.message))
        except Exception:
            logger.exception("chat completion failed")
            return openai_error(500, "the sampler failed to answer; see the server log", "server_error")
        if rollout_id is not None and self.recorder is not None:
            extras = request_attributes(request.headers.get(AGENT_NAME_HEADER), body.get("tools"))
            self.recorder.record(
                CallRecord(
                    rollout_id=rollout_id,
                    attempt_id=request.match_info["attempt_id"],
                    attributes=attributes() | extras,
                    start_time=started,
                    end_time=time.time(),
                )
            )
        if not parsed.stream:
            return web.Response(body=json.dumps(completion).encode(), content_type="application/json")
        return await self._stream(request, sse_chunks(completion, include_usage=parsed.include_usage))

    async def _via_litellm(self, body: dict[str, Any], scope: str | None) -> ModelResponse:
        """The same answer through ``litellm.acompletion``, so LiteLLM's callbacks see the call."""
        forwarded = {k: v for k, v in body.items() if k not in _NOT_FORWARDED}
        if scope is not None:
            forwarded["metadata"] = {TITO_SCOPE: scope}
        response: ModelResponse = await litellm.acompletion(
            model=self.litellm_model, messages=body["messages"], **forwarded
        )
        return response

    async def _stream(self, request: web.Request, chunks: Iterator[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            logger.debug("client left during a streamed answer: %s", request.path)
        return response
