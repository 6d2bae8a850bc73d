"""Lean OpenAI-compatible server: aiohttp in front of the LiteLLM provider, called in-process.

By default the server calls the provider's ``generate`` (what LiteLLM's ``CustomLLM.acompletion``
runs) and builds the JSON body directly (:func:`agl_tinker.endpoint.generation.completion_dict`),
skipping ``litellm.acompletion``'s generic dispatch: with the pinned LiteLLM that dispatch (a thread
hop, logging payloads, cost lookups) costs more per call than the rest of the endpoint together
(``benchmarks/endpoint.py``). ``litellm_dispatch=True`` routes every call through
``litellm.acompletion`` instead, for users whose LiteLLM callbacks must see the calls.

Serves three APIs through one path (:mod:`agl_tinker.endpoint.wire`): ``/v1/chat/completions``,
``/v1/responses`` (OpenAI Responses) and ``/v1/messages`` (Anthropic Messages), bare and under the
rollout-attributed ``/rollout/{rid}/attempt/{aid}/v1/...`` paths Agent-lightning's LLMProxy serves,
plus ``/v1/models``, ``/health`` and ``HEAD /``. Each served name is also answered under its
slash-free alias (:mod:`agl_tinker.endpoint.model_names`). ``litellm_dispatch`` applies to chat
completions only; the other two APIs always call the provider directly. It runs on its own thread
and event loop, so synchronous agents in the same process (and tests) can call it, and hands calls
on rollout paths to a :class:`SpanRecorder` that stores them after the answer has gone out.
``stream=True`` is served as SSE events of the finished answer: the sampler returns whole
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

from agl_tinker.endpoint.chat_request import NESTED_TOO_DEEPLY
from agl_tinker.endpoint.conversation import BadRequest
from agl_tinker.endpoint.generation import generation_from_response, span_attributes
from agl_tinker.endpoint.model_names import slash_free_aliases
from agl_tinker.endpoint.provider import InvalidChatRequest, TinkerChatProvider
from agl_tinker.endpoint.request_scope import TITO_SCOPE
from agl_tinker.endpoint.span_recorder import CallRecord, SpanRecorder
from agl_tinker.endpoint.wire import APIS, CHAT, WireApi
from agl_tinker.spans import AGENT_NAME_HEADER, request_attributes

logger = logging.getLogger(__name__)

_NOT_FORWARDED = frozenset({"model", "messages", "stream", "stream_options", "metadata"})


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
        self.aliases = slash_free_aliases(self.accepted_models)
        """Slash-free alias -> the served name it stands for (:mod:`agl_tinker.endpoint.model_names`)."""
        self.ignored_tools = 0
        """Declared tools the policy cannot call (hosted/server tools), left out of prompts (a count)."""
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
        """Serve on a thread of its own; raises what opening raised (the port taken), having
        closed what it opened (the span recorder's writer, the app runner, the loop)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        caller = asyncio.get_running_loop()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # e.g. the port is taken: close what _open got to start
                try:
                    loop.run_until_complete(self._close())
                finally:
                    loop.close()
                    self._loop = None
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
        app.router.add_get("/", self._alive)
        for prefix in ("", "/rollout/{rollout_id}/attempt/{attempt_id}"):
            for api in APIS:
                app.router.add_post(prefix + "/v1" + api.path, functools.partial(self._serve, api))
            app.router.add_get(prefix + "/v1/models", self._models)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.served_model})

    async def _alive(self, request: web.Request) -> web.Response:
        """``HEAD /`` (Anthropic clients' reachability check) and ``GET /``."""
        return web.Response(text="agl-tinker endpoint")

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "agl-tinker"}
            for name in sorted(self.accepted_models | self.aliases.keys())
        ]
        return web.json_response({"object": "list", "data": data})

    def _model(self, body: dict[str, Any]) -> str | None:
        """The served name ``body`` asks for (an alias resolved), or ``None`` when not served."""
        model = body.get("model")
        if not isinstance(model, str):
            return None
        if model in self.accepted_models:
            return model
        return self.aliases.get(model)

    async def _serve(self, api: WireApi, request: web.Request) -> web.StreamResponse:
        """One call through ``api``: parse, sample (token-in-token-out in the rollout attempt's
        scope), record the span on rollout paths, answer as JSON or SSE."""
        started = time.time()
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return api.error(400, "request body must be valid JSON")
        except RecursionError:  # json.loads recurses once per nesting level
            return api.error(400, NESTED_TOO_DEEPLY)
        if not isinstance(body, dict):
            return api.error(400, "request body must be a JSON object")
        model = self._model(body)
        if model is None:
            asked = body.get("model")
            shown = repr(asked) if isinstance(asked, str) else f"of type {type(asked).__name__}"
            return api.error(400, f"'model' {shown} is not served here; use {self.served_model!r}")
        provider = self.routes.get(model, self.provider)
        try:
            call = api.parse(body, provider)
        except BadRequest as exc:
            return api.error(400, str(exc))
        self.ignored_tools += call.ignored_tools
        rollout_id = request.match_info.get("rollout_id")
        # token-in-token-out reuses only this attempt's own tokens
        scope = None if rollout_id is None else f"{rollout_id}/{request.match_info['attempt_id']}"
        try:
            if self.litellm_dispatch and api is CHAT:
                response = await self._via_litellm(body, scope)
                response.model = model
                answer = response.model_dump()
                generation = generation_from_response(response)
            else:
                generation = await provider.generate(call.request, scope)
                answer = api.answer(generation, model, call, provider.tokenizer)
        except BadRequest as exc:
            return api.error(400, str(exc))
        except InvalidChatRequest as exc:
            return api.error(400, exc.detail)
        except litellm.BadRequestError as exc:
            return api.error(400, str(exc.message))
        except Exception:
            logger.exception("%s call failed", api.name)
            return api.error(500, "the sampler failed to answer; see the server log", "server_error")
        if rollout_id is not None and self.recorder is not None:
            extras = request_attributes(request.headers.get(AGENT_NAME_HEADER), call.tools_offered, api.name)
            self.recorder.record(
                CallRecord(
                    rollout_id=rollout_id,
                    attempt_id=request.match_info["attempt_id"],
                    attributes=span_attributes(generation, call.span_messages, model) | extras,
                    start_time=started,
                    end_time=time.time(),
                )
            )
        if not call.request.stream:
            return web.Response(body=json.dumps(answer).encode(), content_type="application/json")
        return await self._stream(request, api.events(answer, call))

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
