"""The simulated service behind the wire: sessions, training runs, samplers, ordered requests.

One in-process simulator (``fakes.tinker.ServiceClient``) does the work; this layer adds what
the HTTP protocol has and the in-process look-alike does not: sessions, ids the SDK derives
itself (``<session>:train:<n>``, ``<session>:sample:<n>``), idempotent submission (a retried
request with the same ``seq_id`` gets the same future), and per-training-run ordering: requests
of one run are applied in ``seq_id`` order, whatever order they arrive in (the SDK sends the
chunks of one ``forward_backward`` concurrently).

Sessions own their training runs and sampling sessions: finishing a session, or missing its
heartbeats for ``session_expiry_s``, releases them (and their parameters, optimizer state and
remembered submissions), so a server that runs for days holds only its live sessions.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
import warnings
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

from tinker import types

from fakes.tinker import RestClient, SamplingClient, ServiceClient, TrainingClient
from fakes.tinker.errors import bad_request, gone, not_found
from fakes.tinker.stability import session_of

from .codec import ForwardBackwardCall
from .faults import FaultInjector
from .feeds import Feeds
from .futures import MAX_KEPT, Promise, PromiseTable
from .runs import Run, Sampler, SessionClock, call_sim, done_future, failed, in_seq_order, owned_by

DEFAULT_SESSION_EXPIRY_S = 120.0
"""A session that neither heartbeats (the SDK does every 10 s) nor calls for this long has
expired: the SDK warns its user after missing heartbeats for the same time."""
FINISHED_KEPT = 10_000
"""Finished sessions remembered (to answer their heartbeats 410, not 404)."""


class WireService:
    """State of one wire server; all methods run on the server's event loop."""

    def __init__(self, sim: ServiceClient, faults: FaultInjector, loop: asyncio.AbstractEventLoop) -> None:
        self.sim = sim
        self.rest = RestClient(sim._runtime)
        self.faults = faults
        self.promises = PromiseTable(loop)
        self.feeds = Feeds(session_of)
        self.sessions: dict[str, str] = {}  # id -> "active" | "finished" (finished: the last FINISHED_KEPT)
        self._active: dict[str, SessionClock] = {}
        self.released_since_trim = False  # the server returns freed memory to the OS when set
        self.runs: dict[str, Run] = {}
        self.samplers: dict[str, Sampler] = {}
        self._submitted: collections.OrderedDict[Hashable, Promise] = collections.OrderedDict()

    # ---- helpers ---------------------------------------------------------------------------
    def _track(
        self,
        key: Hashable | None,
        work: Future[Any],
        transform: Callable[[Any], Any] = lambda v: v,
        owner: str | None = None,
    ) -> Promise:
        """A promise for ``work``, remembered under ``key`` (for retries) and owned by the session
        ``owner`` (default: the session that ``key``'s id names), which releases it."""
        if owner is None and isinstance(key, tuple) and len(key) > 1 and isinstance(key[1], str):
            owner = session_of(key[1])
        promise = self.promises.track(work, transform, delay_s=self.faults.slow(), owner=owner)
        if key is not None:
            self._submitted[key] = promise
            while len(self._submitted) > MAX_KEPT:  # retries come within seconds, not 20k requests later
                self._submitted.popitem(last=False)
        return promise

    def _seen(self, key: Hashable) -> Promise | None:
        return self._submitted.get(key)

    async def _apply(
        self, run: Run, key: Hashable, seq_id: int | None, submit: Callable[[], Promise]
    ) -> Promise:
        """``submit`` in ``seq_id`` order, once per key: a retry that waited alongside the
        original gets the original's promise."""
        return await in_seq_order(run, seq_id, lambda: self._seen(key) or submit())

    def run(self, model_id: str) -> Run:
        run = self.runs.get(model_id)
        if run is None:
            raise not_found(f"training run {model_id!r} is not loaded in this server", path="model")
        self._seen_now(run.session_id)
        return run

    def sampler(self, sampler_id: str) -> Sampler:
        sampler = self.samplers.get(sampler_id)
        if sampler is None:
            raise not_found(f"sampling session {sampler_id!r} not found", path="sampler")
        self._seen_now(sampler.session_id)
        return sampler

    def _seen_now(self, session_id: str) -> None:
        """A call of the session's counts as a sign of life, like a heartbeat."""
        session = self._active.get(session_id)
        if session is not None:
            session.last_seen = time.monotonic()

    def _session(self, session_id: str) -> str:
        """``session_id`` if it is active (seen now); 404 if unknown, 410 if finished or expired."""
        state = self.sessions.get(session_id)
        if state is None:
            raise not_found(f"session {session_id!r} not found", path="session")
        if state != "active":
            raise gone(f"session {session_id!r} has finished")
        self._active[session_id].last_seen = time.monotonic()
        return session_id

    def _register_run(self, session_id: str) -> Callable[[TrainingClient], TrainingClient]:
        def register(client: TrainingClient) -> TrainingClient:
            self.runs[client.model_id] = Run(client, session_id)
            return client

        return register

    # ---- sessions ----------------------------------------------------------------------------
    def create_session(self, request: types.CreateSessionRequest) -> types.CreateSessionResponse:
        session_id = str(uuid.uuid4())
        self.sessions[session_id] = "active"
        self._active[session_id] = SessionClock()
        return types.CreateSessionResponse(session_id=session_id)

    def heartbeat(self, session_id: str) -> str:
        """The session's state: ``active`` (and seen now), ``finished`` (HTTP 410) or unknown (404)."""
        state = self.sessions.get(session_id)
        if state is None:
            raise not_found(f"session {session_id!r} not found", path="session")
        if state == "active":
            self._active[session_id].last_seen = time.monotonic()
        return state

    def finish_session(self, session_id: str) -> None:
        """End the session and release what it owns (idempotent; 404 if unknown)."""
        if session_id not in self.sessions:
            raise not_found(f"session {session_id!r} not found", path="session")
        self._release(session_id)

    def expire_idle(self, expiry_s: float, now: float | None = None) -> list[str]:
        """Release every active session unseen for ``expiry_s``; returns their ids."""
        now = time.monotonic() if now is None else now
        idle = [sid for sid, session in self._active.items() if now - session.last_seen > expiry_s]
        for session_id in idle:
            self._release(session_id)
        return idle

    def _release(self, session_id: str) -> None:
        self.released_since_trim = True
        self._active.pop(session_id, None)
        self.sessions.pop(session_id, None)
        self.sessions[session_id] = "finished"  # re-inserted last: the oldest finished go first
        finished = [sid for sid, state in self.sessions.items() if state == "finished"]
        for old in finished[: max(0, len(finished) - FINISHED_KEPT)]:
            del self.sessions[old]
        for model_id in [m for m, run in self.runs.items() if run.session_id == session_id]:
            del self.runs[model_id]
        for sampler_id in [i for i, sampler in self.samplers.items() if sampler.session_id == session_id]:
            del self.samplers[sampler_id]
        prefix = f"{session_id}:"
        for key in [k for k in self._submitted if owned_by(k, session_id, prefix)]:
            del self._submitted[key]
        self.promises.release(session_id)
        self.feeds.release(session_id)
        self.sim._runtime.custom_losses.release(session_id)

    # ---- training runs -----------------------------------------------------------------------
    def create_model(self, request: types.CreateModelRequest) -> Promise:
        key = ("create_model", request.session_id, request.model_seq_id)
        if (seen := self._seen(key)) is not None:
            return seen
        self._session(request.session_id)
        model_id = f"{request.session_id}:train:{request.model_seq_id}"
        lora = request.lora_config or types.LoraConfig(rank=32)
        work = self.sim._create_lora(
            request.base_model,
            lora.rank,
            lora.seed,
            lora.train_mlp,
            lora.train_attn,
            lora.train_unembed,
            request.user_metadata,
            request.optimizer_config,
            model_id=model_id,
        ).future()
        register = self._register_run(request.session_id)
        return self._track(key, work, lambda c: types.CreateModelResponse(model_id=register(c).model_id))

    def create_custom_loss(self, request: types.CreateCustomLossRequest) -> Promise:
        """Store the session's traced loss (checked against the simulator's allowed operations)."""
        key = ("custom_loss", request.session_id, request.custom_loss_seq_id)
        if (seen := self._seen(key)) is not None:
            return seen
        self._session(request.session_id)
        try:
            loss_id = self.sim._runtime.custom_losses.create(
                request.session_id, request.custom_loss_seq_id, request.name, request.inputs, request.graph
            )
            work = done_future(loss_id)
        except Exception as exc:  # a refused graph fails the request (the SDK raises it from result())
            work = failed(exc)
        return self._track(key, work, lambda loss_id: types.CreateCustomLossResponse(loss_id=loss_id))

    def get_info(self, request: types.GetInfoRequest) -> types.GetInfoResponse:
        return self.run(request.model_id).client.get_info()

    async def forward_backward(self, call: ForwardBackwardCall) -> Promise:
        key = ("train", call.model_id, call.seq_id)
        if (seen := self._seen(key)) is not None:
            return seen
        run = self.run(call.model_id)
        method = run.client.forward if call.forward_only else run.client.forward_backward

        def submit() -> Promise:
            work = call_sim(lambda: method(call.data, call.loss_fn, call.loss_fn_config))  # type: ignore[arg-type]
            return self._track(key, work)

        return await self._apply(run, key, call.seq_id, submit)

    async def optim_step(self, request: types.OptimStepRequest) -> Promise:
        key = ("train", request.model_id, request.seq_id)
        if (seen := self._seen(key)) is not None:
            return seen
        run = self.run(request.model_id)
        return await self._apply(
            run,
            key,
            request.seq_id,
            lambda: self._track(key, call_sim(lambda: run.client.optim_step(request.optim_params))),
        )

    async def save_weights(self, request: types.SaveWeightsRequest) -> Promise:
        key = ("train", request.model_id, request.seq_id)
        if (seen := self._seen(key)) is not None:
            return seen
        run = self.run(request.model_id)
        name = request.path or f"state-{request.seq_id}"
        return await self._apply(
            run,
            key,
            request.seq_id,
            lambda: self._track(
                key,
                call_sim(
                    lambda: run.client.save_state(
                        name, request.ttl_seconds, request.overwrite, request.user_metadata
                    )
                ),
            ),
        )

    async def save_weights_external(self, request: types.SaveWeightsExternalRequest) -> Promise:
        key = ("train", request.model_id, request.seq_id)
        if (seen := self._seen(key)) is not None:
            return seen
        run = self.run(request.model_id)

        def save() -> Any:
            return run.client.save_weights_external(
                request.path, request.ttl_seconds, request.age_encryption_recipients
            )

        return await self._apply(
            run,
            key,
            request.seq_id,
            lambda: self._track(
                key, call_sim(save), lambda r: types.SaveWeightsExternalResponseInternal(path=r.path)
            ),
        )

    async def save_weights_for_sampler(self, request: types.SaveWeightsForSamplerRequest) -> Promise:
        key = ("train", request.model_id, request.seq_id)
        if (seen := self._seen(key)) is not None:
            return seen
        run = self.run(request.model_id)

        def submit() -> Promise:
            if (name := request.path) is not None:
                work = call_sim(
                    lambda: run.client.save_weights_for_sampler(
                        name, request.ttl_seconds, request.user_metadata
                    )
                )
                return self._track(
                    key, work, lambda r: types.SaveWeightsForSamplerResponseInternal(path=r.path)
                )
            sampler_id = f"{run.session_id}:sample:{request.sampling_session_seq_id}"
            work = call_sim(lambda: run.client.save_weights_and_get_sampling_client(kind=request.kind))
            base = run.client.get_info().model_data.model_name or ""

            def register(client: SamplingClient) -> types.SaveWeightsForSamplerResponseInternal:
                self.samplers[sampler_id] = Sampler(client, base, None, run.session_id)
                return types.SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id)

            return self._track(key, work, register)

        return await self._apply(run, key, request.seq_id, submit)

    async def load_weights(self, request: types.LoadWeightsRequest) -> Promise:
        if request.session_id is not None:  # a new run from a checkpoint (seq id 0, no create_model)
            key: Hashable = ("create_model", request.session_id, request.model_seq_id)
            if (seen := self._seen(key)) is not None:
                return seen
            self._session(request.session_id)
            model_id = f"{request.session_id}:train:{request.model_seq_id}"
            work = self.sim._from_state(
                request.path, request.base_model, request.user_metadata, request.optimizer, model_id=model_id
            ).future()
            register = self._register_run(request.session_id)
            return self._track(
                key,
                work,
                lambda c: types.LoadWeightsResponse(path=request.path, model_id=register(c).model_id),
            )
        if request.model_id is None:
            raise bad_request("load_weights needs model_id or session_id", path="load_weights")
        key = ("train", request.model_id, request.seq_id)
        if (seen := self._seen(key)) is not None:
            return seen
        run = self.run(request.model_id)
        load = run.client.load_state_with_optimizer if request.optimizer else run.client.load_state
        return await self._apply(
            run, key, request.seq_id, lambda: self._track(key, call_sim(lambda: load(request.path)))
        )

    # ---- sampling ----------------------------------------------------------------------------
    async def create_sampling_session(
        self, request: types.CreateSamplingSessionRequest
    ) -> types.CreateSamplingSessionResponse:
        sampler_id = f"{request.session_id}:sample:{request.sampling_session_seq_id}"
        if sampler_id not in self.samplers:
            self._session(request.session_id)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                client = await asyncio.wrap_future(
                    self.sim.create_sampling_client(request.model_path, request.base_model).future()
                )
            self.samplers[sampler_id] = Sampler(
                client, client.get_base_model(), request.model_path, request.session_id
            )
        return types.CreateSamplingSessionResponse(sampling_session_id=sampler_id)

    def join_sampling_session(
        self, request: types.JoinSamplingSessionRequest
    ) -> types.JoinSamplingSessionResponse:
        sampler = self.sampler(request.sampling_session_id)
        sampler.clones += 1
        return types.JoinSamplingSessionResponse(client_counter=sampler.clones)

    def get_sampler(self, sampler_id: str) -> types.GetSamplerResponse:
        sampler = self.sampler(sampler_id)
        return types.GetSamplerResponse(
            sampler_id=sampler_id, base_model=sampler.base_model, model_path=sampler.model_path
        )

    def asample(self, request: types.SampleRequest) -> tuple[Promise, list[str]]:
        """The sample's promise and its sequence ids (fixed at submission, as the service does)."""
        if request.sampling_session_id is None:
            raise bad_request("asample needs a sampling_session_id", path="asample")
        key = ("sample", request.sampling_session_id, request.seq_id)
        if (seen := self._seen(key)) is not None:
            return seen, seen.sequence_ids
        sampler = self.sampler(request.sampling_session_id).client
        target = request.target_prompt_logprobs
        sequence_ids = [str(uuid.uuid4()) for _ in range(request.num_samples)]
        work = call_sim(
            lambda: sampler.submit_sample(
                request.prompt,
                request.num_samples,
                request.sampling_params,
                bool(request.prompt_logprobs),
                request.topk_prompt_logprobs,
                request.topk_sample_logprobs,
                None
                if target is None
                else types.TensorData(data=target.data, dtype=target.dtype, shape=target.shape),
                request.prompt_alt_tokens_k,
                request.prompt_logprobs_last_n,
                sequence_ids=sequence_ids,
                record=bool(request.record_stability_info),
                session_id=session_of(request.sampling_session_id or ""),
            )
        )
        promise = self._track(
            key if request.seq_id is not None else None, work, owner=session_of(request.sampling_session_id)
        )
        promise.sequence_ids = sequence_ids
        self.feeds.watch(request.sampling_session_id, request.seq_id, promise)
        return promise, promise.sequence_ids

    def cancel(self, request_id: str) -> None:
        promise = self.promises.get(request_id)
        if promise is not None:
            promise.settle(error=bad_request(f"request {request_id} was cancelled", path="cancel_future"))

    # ---- REST --------------------------------------------------------------------------------
    async def rest_call(self, fn: Callable[[RestClient], Any]) -> Any:
        return await asyncio.wrap_future(fn(self.rest).future())
