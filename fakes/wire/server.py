"""aiohttp server speaking the Tinker HTTP protocol, over the in-process simulator.

Point the unmodified SDK at it with ``TINKER_BASE_URL=http://127.0.0.1:PORT`` and any
``tml-`` API key. Routes, bodies and answers follow the installed SDK (``tinker/resources/``,
``tinker/lib/``): JSON of ``tinker.types`` for most calls, protobuf (``tinker_public_pb2``) for
the ``forward_backward`` request and for ``SampleResponse`` / ``ForwardBackwardOutput`` results.
``retrieve_future`` is a long poll: it answers the moment the result exists, or ``try_again``
after ``poll_hold_s``.

``start_in_thread()`` runs one on its own loop for tests; ``agl-tinker sim-server`` runs one in
the foreground.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pydantic
import tinker
from aiohttp import web
from tinker import types
from tinker.types.try_again_response import TryAgainResponse

from fakes.tinker import ServiceClient, SimConfig
from fakes.tinker.rest import capabilities

from .codec import PROTO_CONTENT_TYPE, CodecError, decode_forward_backward
from .faults import Fault, FaultInjector, WireFaults
from .futures import Promise
from .http import _detail, _json, failure, result_response
from .memory import return_free_memory
from .rest import FILES, RestRoutes
from .service import DEFAULT_SESSION_EXPIRY_S, WireService
from .signing import Signer
from .traces import Timeline, TraceRoutes

logger = logging.getLogger(__name__)

API = "/api/v1"
DEFAULT_POLL_HOLD_S = 20.0  # below the SDK's 45 s retrieve_future timeout
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Flags of /client/config: plain API-key auth (no JWT exchange), per-request futures polling,
# client-side custom losses (served server-side too: ``custom_loss_server_side=True``),
# server-allocated clone ids for unpickled sampling clients.
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "pjwt_auth_enabled": False,
    "sample_use_retrieve_futures": False,
    "custom_loss_server_side": False,
    "sample_join_sampling_session": True,
    "proto_compress_fwdbwd": False,
}


class WireServer:
    """The HTTP face of one simulated service; ``start()`` binds, ``stop()`` releases."""

    def __init__(
        self,
        sim_config: SimConfig | None = None,
        faults: WireFaults | None = None,
        poll_hold_s: float = DEFAULT_POLL_HOLD_S,
        client_config: Mapping[str, Any] | None = None,
        session_expiry_s: float | None = None,
    ) -> None:
        """``session_expiry_s``: idle time after which a session is released; default
        ``$AGL_TINKER_WIRE_SESSION_EXPIRY_S`` or 120 s."""
        self.sim_config = sim_config or SimConfig.from_env()
        self.faults = FaultInjector(faults or WireFaults.from_env())
        self.poll_hold_s = poll_hold_s
        self.client_config = types.ClientConfigResponse(**{**DEFAULT_CLIENT_CONFIG, **(client_config or {})})
        if session_expiry_s is None:
            raw = os.environ.get("AGL_TINKER_WIRE_SESSION_EXPIRY_S")
            session_expiry_s = float(raw) if raw else DEFAULT_SESSION_EXPIRY_S
        if session_expiry_s <= 0:
            raise ValueError(f"session_expiry_s must be > 0, got {session_expiry_s}")
        self.session_expiry_s = session_expiry_s
        self.url = ""
        self.signer = Signer()
        self.timeline = Timeline()
        self._reaper: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._service: WireService | None = None

    @property
    def service(self) -> WireService:
        assert self._service is not None, "the server is not started"
        return self._service

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind and serve; returns the base URL (``http://host:port``)."""
        self._service = WireService(
            ServiceClient(config=self.sim_config), self.faults, asyncio.get_running_loop()
        )
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._middleware])
        app.add_routes(self._routes())
        # held long polls are cut at shutdown rather than waited for (SDK clients retry them)
        # Bodies reach the handlers as sent: the codec decodes zstd forward_backward bodies itself
        # (aiohttp would need backports.zstd on Python < 3.14, and refuses them with a 400 without).
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0, auto_decompress=False
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound_port}"
        self._reaper = asyncio.create_task(self._expire_sessions())
        return self.url

    async def _expire_sessions(self) -> None:
        """Release sessions that stopped heartbeating, checking a few times per expiry period; once
        sessions were released, hand the freed heap back to the OS (see :func:`fakes.wire.memory.return_free_memory`)."""
        while True:
            await asyncio.sleep(min(self.session_expiry_s / 4, 10.0))
            self.service.expire_idle(self.session_expiry_s)
            if self.service.released_since_trim:
                self.service.released_since_trim = False
                return_free_memory()

    async def stop(self) -> None:
        """Stop serving (open long polls end) and close the simulated service."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._service is not None:
            self._service.sim.close("success")

    # ---- plumbing ----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != f"{API}/healthz" and not request.path.startswith(FILES):
            key = request.headers.get("X-API-Key", "")
            if not key.startswith(("tml-", "eyJ")):
                return _detail(401, "missing or invalid API key (X-API-Key must start with 'tml-')")
        try:
            return await handler(request)
        except tinker.APIStatusError as exc:
            answer = _detail(exc.status_code, exc.message)
            retry = exc.response.headers.get("x-should-retry")  # the error's own retry hint
            if retry is not None:
                answer.headers["x-should-retry"] = retry
            return answer
        except (pydantic.ValidationError, CodecError, json.JSONDecodeError) as exc:
            return _detail(400, str(exc))

    def _fault(self, request: web.Request, poll: bool, request_id: str = "") -> web.StreamResponse | None:
        """The injected fault's answer for this request, or None to serve it."""
        fault = self.faults.draw(poll)
        if fault is None:
            return None
        if fault is Fault.DROP:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)  # never delivered: the connection is gone
        if fault is Fault.ERROR_5XX:
            return _detail(503, "simulated transient server error")
        if fault is Fault.TIMEOUT_408:
            return _json({"detail": "simulated request timeout", "queue_state": "active"}, status=408)
        if fault is Fault.RATE_LIMIT_429:
            return _detail(429, "simulated rate limit")
        return self._try_again(request_id)

    @staticmethod
    def _try_again(request_id: str) -> web.Response:
        return _json(TryAgainResponse(request_id=request_id, queue_state="active"))

    def _future(
        self,
        request: web.Request,
        promise: Promise,
        model_id: str | None = None,
        sequence_ids: list[str] | None = None,
        track: str | None = None,
        name: str | None = None,
    ) -> web.Response:
        """The ``UntypedAPIFuture`` answer; the request goes on its session's timeline (``traces.py``)."""
        if promise.owner is not None:
            route = name or request.path.rsplit("/", 1)[-1]
            self.timeline.record(promise.owner, track or model_id or promise.owner, route, promise)
        return _json(
            types.UntypedAPIFuture(
                request_id=promise.request_id, model_id=model_id, sample_sequence_ids=sequence_ids
            )
        )

    def _submit(self, parse: Callable[[Any], Any], call: Callable[[Any], Any]) -> Handler:
        """A future-creating JSON route: faults, body -> request type, call -> promise."""

        async def handle(request: web.Request) -> web.StreamResponse:
            if (answer := self._fault(request, poll=False)) is not None:
                return answer
            body = parse(await request.json())
            promise = call(body)
            if asyncio.iscoroutine(promise):
                promise = await promise
            return self._future(request, promise, getattr(body, "model_id", None))

        return handle

    def _routes(self) -> list[web.RouteDef]:
        s = self.service
        T = types
        return [
            web.get(f"{API}/healthz", self._healthz),
            web.post(f"{API}/client/config", self._client_config),
            web.post(f"{API}/client/dynamic_config", self._dynamic_config),
            web.post(f"{API}/create_session", self._create_session),
            web.post(f"{API}/session_heartbeat", self._heartbeat),
            web.post(f"{API}/sessions/{{session_id}}/finish", self._finish_session),
            web.get(f"{API}/get_server_capabilities", self._capabilities),
            web.post(f"{API}/telemetry", self._telemetry),
            web.post(
                f"{API}/create_model", self._submit(T.CreateModelRequest.model_validate, s.create_model)
            ),
            web.post(
                f"{API}/create_custom_loss",
                self._submit(T.CreateCustomLossRequest.model_validate, s.create_custom_loss),
            ),
            web.post(f"{API}/get_info", self._get_info),
            web.post(f"{API}/forward_backward", self._forward_backward),
            web.post(f"{API}/optim_step", self._submit(T.OptimStepRequest.model_validate, s.optim_step)),
            web.post(
                f"{API}/save_weights", self._submit(T.SaveWeightsRequest.model_validate, s.save_weights)
            ),
            web.post(
                f"{API}/save_weights_for_sampler",
                self._submit(T.SaveWeightsForSamplerRequest.model_validate, s.save_weights_for_sampler),
            ),
            web.post(
                f"{API}/save_weights_external",
                self._submit(T.SaveWeightsExternalRequest.model_validate, s.save_weights_external),
            ),
            web.post(
                f"{API}/load_weights", self._submit(T.LoadWeightsRequest.model_validate, s.load_weights)
            ),
            web.post(f"{API}/create_sampling_session", self._create_sampling_session),
            web.post(f"{API}/join_sampling_session", self._join_sampling_session),
            web.get(f"{API}/samplers/{{sampler_id}}", self._get_sampler),
            web.post(f"{API}/asample", self._asample),
            web.post(f"{API}/retrieve_future", self._retrieve_future),
            web.post(f"{API}/retrieve_futures", self._retrieve_futures),
            web.post(f"{API}/cancel_future", self._cancel_future),
            *RestRoutes(s, self.signer).routes(API),
            *TraceRoutes(self.timeline, self.signer, lambda sid: sid in s.sessions).routes(API),
        ]

    # ---- service, session, config --------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        return _json(types.HealthResponse(status="ok"))

    async def _client_config(self, request: web.Request) -> web.Response:
        return _json(self.client_config)

    async def _dynamic_config(self, request: web.Request) -> web.Response:
        return _json(types.ClientDynamicConfigResponse(sample_cancel_enabled=True))

    async def _create_session(self, request: web.Request) -> web.Response:
        body = types.CreateSessionRequest.model_validate(await request.json())
        return _json(self.service.create_session(body))

    async def _heartbeat(self, request: web.Request) -> web.Response:
        body = types.SessionHeartbeatRequest.model_validate(await request.json())
        if self.service.heartbeat(body.session_id) == "finished":
            return _detail(410, f"session {body.session_id} has finished")
        return _json(types.SessionHeartbeatResponse())

    async def _finish_session(self, request: web.Request) -> web.Response:
        self.service.finish_session(request.match_info["session_id"])
        return _json(None)

    async def _capabilities(self, request: web.Request) -> web.Response:
        return _json(capabilities())

    async def _telemetry(self, request: web.Request) -> web.Response:
        await request.read()
        return _json(types.TelemetryResponse(status="accepted"))

    # ---- training ------------------------------------------------------------------------------
    async def _get_info(self, request: web.Request) -> web.Response:
        body = types.GetInfoRequest.model_validate(await request.json())
        return _json(self.service.get_info(body))

    async def _forward_backward(self, request: web.Request) -> web.StreamResponse:
        if (answer := self._fault(request, poll=False)) is not None:
            return answer
        if PROTO_CONTENT_TYPE not in request.content_type:
            return _detail(415, f"forward_backward takes {PROTO_CONTENT_TYPE} bodies")
        call = decode_forward_backward(await request.read(), request.headers.get("Content-Encoding"))
        promise = await self.service.forward_backward(call)
        return self._future(request, promise, call.model_id, name="forward" if call.forward_only else None)

    # ---- sampling ------------------------------------------------------------------------------
    async def _create_sampling_session(self, request: web.Request) -> web.StreamResponse:
        if (answer := self._fault(request, poll=False)) is not None:
            return answer
        body = types.CreateSamplingSessionRequest.model_validate(await request.json())
        return _json(await self.service.create_sampling_session(body))

    async def _join_sampling_session(self, request: web.Request) -> web.Response:
        body = types.JoinSamplingSessionRequest.model_validate(await request.json())
        return _json(self.service.join_sampling_session(body))

    async def _get_sampler(self, request: web.Request) -> web.Response:
        return _json(self.service.get_sampler(request.match_info["sampler_id"]))

    async def _asample(self, request: web.Request) -> web.StreamResponse:
        if (answer := self._fault(request, poll=False)) is not None:
            return answer
        body = types.SampleRequest.model_validate(await request.json())
        promise, sequence_ids = self.service.asample(body)
        return self._future(request, promise, sequence_ids=sequence_ids, track=body.sampling_session_id)

    # ---- futures -------------------------------------------------------------------------------
    async def _retrieve_future(self, request: web.Request) -> web.StreamResponse:
        body = types.FutureRetrieveRequest.model_validate(await request.json())
        if (answer := self._fault(request, poll=True, request_id=body.request_id)) is not None:
            return answer
        promise = self.service.promises.get(body.request_id)
        if promise is None:
            return _detail(404, f"unknown request {body.request_id}")
        if not await promise.wait(self.poll_hold_s):
            return self._try_again(body.request_id)
        value, error = promise.outcome()
        if error is not None:
            return _json(failure(error))
        return result_response(value)

    async def _retrieve_futures(self, request: web.Request) -> web.Response:
        """The session poller's long poll (``sample_use_retrieve_futures``; see ``feeds.py``)."""
        body = types.FuturesRetrieveRequest.model_validate(await request.json())
        target = body.target
        self.service.sampler(target.sampling_session_id)  # 404 for an unknown or released session
        self.service.promises.drop(body.retrieved_request_ids)
        timeout = self.poll_hold_s if body.timeout is None else min(body.timeout, self.poll_hold_s)
        feed = self.service.feeds.feed(target.sampling_session_id, target.cloned_sampler_id)
        return _json(await feed.poll(body.prev_cursor, timeout))

    async def _cancel_future(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.service.cancel(str(body.get("request_id", "")))
        return _json(None)
