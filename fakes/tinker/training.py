"""``TrainingClient`` of the simulator: same methods, arguments and return types as the SDK's.

Requests run in submission order on one worker thread, like the service's per-model queue; the
cost model's training costs (``SimConfig.train_token_s``, ``optim_step_s``, ``save_sampler_s``, and
``sampler_load_s`` for the saves that wait for it) keep that worker busy, so they add up per
training client.
Gradients accumulate over ``forward_backward`` calls until ``optim_step`` applies them.
Sampler saves are numbered (the weights version a sampling client was created at); in-flight saves
publish to the one shared target of this training model (:mod:`fakes.tinker.inflight`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture
from tinker.lib.public_interfaces.custom_loss import LossHandle
from tinker.types.optimizer import OptimParamsBase
from typing_extensions import deprecated

from . import errors, losses
from .checkpoints import TinkerPath, restore
from .datums import ParsedDatum, parse
from .futures import ClientFuture
from .inflight import InflightClientWeights, InflightTarget, Snapshot
from .optim import Adam
from .policy import Policy, PolicyConfig
from .stability import recorded_logprobs, session_of

if TYPE_CHECKING:
    from .runtime import Runtime
    from .sampling import SamplingClient

_ASYNC = "deprecated in the SDK: call the method without _async; it returns an APIFuture at once"
CustomLossFn = Callable[[list[types.Datum], list[Any]], tuple[Any, dict[str, float]]]


def policy_meta(config: PolicyConfig) -> dict[str, Any]:
    return {
        "base_model": config.base_model.name,
        "rank": config.rank,
        "seed": config.seed,
        "train_attn": config.train_attn,
        "train_mlp": config.train_mlp,
        "train_unembed": config.train_unembed,
    }


class TrainingClient:
    """A LoRA training run of the simulated policy."""

    def __init__(self, runtime: Runtime, model_id: str, policy: Policy, optimizer: Adam) -> None:
        self._runtime = runtime
        self.model_id = model_id
        self._policy = policy
        self._optimizer = optimizer
        self._grads = {k: torch.zeros_like(v) for k, v in policy.trainable_params().items()}
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tinker-sim-train-{model_id}")
        self.session_id = session_of(model_id)
        self._sampler_saves = 0
        self._inflight: InflightTarget | None = None
        base = policy.config.base_model.name
        self._info = types.GetInfoResponse(
            model_data=types.ModelData(arch="sim-trie-lora", model_name=base, tokenizer_id=base),
            model_id=model_id,
            is_lora=True,
            lora_rank=policy.config.rank,
            model_name=base,
        )

    # ---- plumbing ------------------------------------------------------------------------
    def _submit(self, operation: str, fn: Callable[[], Any], hold_s: float = 0.0) -> Any:
        """Queue ``fn`` on this client's one worker; ``hold_s`` is its modelled service time."""
        return self._runtime.dispatcher.call(self._queue, operation, fn, hold_s=hold_s)

    def _train_cost_s(self, data: list[types.Datum]) -> float:
        return self._runtime.config.train_cost_s(sum(d.model_input.length for d in data))

    def _parse(self, data: list[types.Datum]) -> list[ParsedDatum]:
        if not data:
            raise ValueError("No data provided")
        context = self._policy.config.base_model.max_context_length
        return [parse(d, self._policy.vocab.size, context) for d in data]

    def _logprobs(self, parsed: list[ParsedDatum]) -> list[torch.Tensor]:
        return self._policy.score([p.inputs for p in parsed], [p.targets for p in parsed])

    def _accumulate(self, loss: torch.Tensor) -> None:
        params = self._policy.trainable_params()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (name, _), grad in zip(params.items(), grads, strict=True):
            if grad is not None:
                self._grads[name] += grad

    @staticmethod
    def _output(logprobs: list[torch.Tensor], loss_sum: float) -> types.ForwardBackwardOutput:
        outputs = [
            {"logprobs": types.TensorData.from_numpy(lp.detach().numpy().astype(np.float32))}
            for lp in logprobs
        ]
        return types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={"loss:sum": loss_sum}
        )

    def _run_loss(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        backward: bool,
    ) -> types.ForwardBackwardOutput:
        if loss_fn == "custom":  # an uploaded loss (``ServiceClient.create_custom_loss``), by id
            custom = self._runtime.custom_losses.get(self.session_id, loss_fn_config)
            custom.check_inputs(data)
            return self._run_custom(data, custom.batch_loss, backward)
        parsed = self._parse(data)
        for p in parsed:
            losses.check(loss_fn, {"target_tokens", *p.tensors}, loss_fn_config)
        recorded = [self._recorded(p) if loss_fn in losses.NEEDS_PROVENANCE else None for p in parsed]
        with torch.set_grad_enabled(backward):
            logprobs = self._logprobs(parsed)
            per_datum = [
                losses.datum_loss(loss_fn, lp, p.tensors, loss_fn_config, rec)
                for lp, p, rec in zip(logprobs, parsed, recorded, strict=True)
            ]
            total = torch.stack(per_datum).sum()
            if backward:
                self._accumulate(total)
        return self._output(logprobs, total.item())

    def _run_custom(
        self, data: list[types.Datum], loss_fn: CustomLossFn, backward: bool
    ) -> types.ForwardBackwardOutput:
        """``loss_fn(data, logprobs) -> (loss, metrics)`` on the datums' logprobs."""
        with torch.set_grad_enabled(backward):
            logprobs = self._logprobs(self._parse(data))
            loss, metrics = loss_fn(data, logprobs)
            if backward:
                self._accumulate(loss)
        out = self._output(logprobs, float(loss.detach()))
        out.metrics.update({k: float(v) for k, v in metrics.items()})
        return out

    def _recorded(self, parsed: ParsedDatum) -> torch.Tensor:
        return recorded_logprobs(
            self._runtime.stability,
            self.session_id,
            parsed.model_input_spans,
            parsed.loss_fn_input_spans,
            parsed.inputs,
            parsed.targets,
        )

    # ---- forward / backward ----------------------------------------------------------------
    def forward(
        self,
        data: list[types.Datum],
        loss_fn: types.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Logprobs and loss without gradients."""
        return self._submit(
            "forward",
            lambda: self._run_loss(data, loss_fn, loss_fn_config, backward=False),
            hold_s=self._train_cost_s(data),
        )

    @deprecated(_ASYNC, category=FutureWarning)
    async def forward_async(
        self,
        data: list[types.Datum],
        loss_fn: types.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        return self.forward(data, loss_fn, loss_fn_config)

    def forward_backward(
        self,
        data: list[types.Datum],
        loss_fn: types.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """Logprobs and loss; gradients are added to the pending update."""
        return self._submit(
            "forward_backward",
            lambda: self._run_loss(data, loss_fn, loss_fn_config, backward=True),
            hold_s=self._train_cost_s(data),
        )

    @deprecated(_ASYNC, category=FutureWarning)
    async def forward_backward_async(
        self,
        data: list[types.Datum],
        loss_fn: types.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        return self.forward_backward(data, loss_fn, loss_fn_config)

    def forward_backward_custom(
        self,
        data: list[types.Datum],
        loss_fn: CustomLossFn | LossHandle,
        *,
        loss_type_input: Literal["logprobs"] | None = None,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """A user loss on the datums' logprob tensors: a callable, or a ``LossHandle`` from
        ``ServiceClient.create_custom_loss`` (run by its ``loss_id``, as the service runs uploaded losses)."""
        if loss_type_input is not None and loss_type_input != "logprobs":
            raise ValueError(f"Unsupported loss_type_input={loss_type_input!r}")
        if isinstance(loss_fn, LossHandle):
            if loss_fn.session_id != self.session_id or loss_fn.loss_id is None:
                raise ValueError(f"LossHandle {loss_fn.name!r} was not created in this client's session")
            return self.forward_backward(data, "custom", {"loss_id": loss_fn.loss_id})

        return self._submit(
            "forward_backward_custom",
            lambda: self._run_custom(data, loss_fn, backward=True),
            hold_s=self._train_cost_s(data),
        )

    @deprecated(_ASYNC, category=FutureWarning)
    async def forward_backward_custom_async(
        self,
        data: list[types.Datum],
        loss_fn: CustomLossFn | LossHandle,
        *,
        loss_type_input: Literal["logprobs"] | None = None,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        return self.forward_backward_custom(data, loss_fn, loss_type_input=loss_type_input)

    # ---- optimizer ---------------------------------------------------------------------------
    def optim_step(
        self,
        optim_params: types.OptimParams | None = None,
        *,
        adam_params: types.AdamParams | None = None,
    ) -> APIFuture[types.OptimStepResponse]:
        """Apply the accumulated gradients with AdamW and clear them."""
        if optim_params is not None and adam_params is not None:
            raise ValueError("Specify optim_params or legacy adam_params, not both")
        params = optim_params if optim_params is not None else adam_params
        if not isinstance(params, (types.AdamParams, OptimParamsBase)):
            raise TypeError("Expected AdamParams or OptimParamsBase")

        def run() -> types.OptimStepResponse:
            if not isinstance(params, types.AdamParams):
                raise errors.bad_request("this training run was created with the Adam optimizer")
            metrics = self._optimizer.step(
                self._grads,
                learning_rate=params.learning_rate,
                beta1=params.beta1,
                beta2=params.beta2,
                eps=params.eps,
                weight_decay=params.weight_decay,
                grad_clip_norm=params.grad_clip_norm,
            )
            for grad in self._grads.values():
                grad.zero_()
            self._policy.invalidate()
            return types.OptimStepResponse(metrics=metrics)

        return self._submit("optim_step", run, hold_s=self._runtime.config.optim_step_s)

    @deprecated(_ASYNC, category=FutureWarning)
    async def optim_step_async(
        self,
        optim_params: types.OptimParams | None = None,
        *,
        adam_params: types.AdamParams | None = None,
    ) -> APIFuture[types.OptimStepResponse]:
        return self.optim_step(optim_params, adam_params=adam_params)

    # ---- checkpoints -------------------------------------------------------------------------
    def _save(
        self,
        kind: str,
        name: str,
        with_optimizer: bool,
        user_metadata: dict[str, str] | None,
        overwrite: bool,
        ttl_seconds: int | None = None,
    ) -> str:
        if not name or "/" in name:
            raise errors.bad_request(f"invalid checkpoint name {name!r}", path="weights/save")
        path = TinkerPath(self.model_id, kind, name)
        meta = {**policy_meta(self._policy.config), "user_metadata": user_metadata}
        optimizer = self._optimizer.state_dict() if with_optimizer else None
        store = self._runtime.store
        return store.save(
            path, meta, self._policy.params, optimizer, overwrite=overwrite, ttl_seconds=ttl_seconds
        )

    def save_state(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[types.SaveWeightsResponse]:
        """Weights and optimizer state under ``tinker://<model_id>/weights/<name>``."""

        def run() -> types.SaveWeightsResponse:
            return types.SaveWeightsResponse(
                path=self._save("weights", name, True, user_metadata, overwrite, ttl_seconds)
            )

        return self._submit("save_state", run)

    @deprecated(_ASYNC, category=FutureWarning)
    async def save_state_async(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[types.SaveWeightsResponse]:
        return self.save_state(
            name, ttl_seconds=ttl_seconds, overwrite=overwrite, user_metadata=user_metadata
        )

    def _load(self, path: str, optimizer: bool) -> types.LoadWeightsResponse:
        restore(
            self._runtime.store, TinkerPath.parse(path), self._policy, self._optimizer if optimizer else None
        )
        return types.LoadWeightsResponse(path=path, model_id=self.model_id)

    @deprecated(
        "load_state* is deprecated in the SDK: use ServiceClient.create_training_client_from_state*",
        category=FutureWarning,
    )
    def load_state(
        self, path: str, weights_access_token: str | None = None
    ) -> APIFuture[types.LoadWeightsResponse]:
        return self._submit("load_state", lambda: self._load(path, optimizer=False))

    @deprecated(
        "load_state* is deprecated in the SDK: use ServiceClient.create_training_client_from_state*",
        category=FutureWarning,
    )
    async def load_state_async(
        self, path: str, weights_access_token: str | None = None
    ) -> APIFuture[types.LoadWeightsResponse]:
        return self._submit("load_state", lambda: self._load(path, optimizer=False))

    @deprecated(
        "load_state* is deprecated in the SDK: use ServiceClient.create_training_client_from_state*",
        category=FutureWarning,
    )
    def load_state_with_optimizer(
        self, path: str, weights_access_token: str | None = None
    ) -> APIFuture[types.LoadWeightsResponse]:
        return self._submit("load_state", lambda: self._load(path, optimizer=True))

    @deprecated(
        "load_state* is deprecated in the SDK: use ServiceClient.create_training_client_from_state*",
        category=FutureWarning,
    )
    async def load_state_with_optimizer_async(
        self, path: str, weights_access_token: str | None = None
    ) -> APIFuture[types.LoadWeightsResponse]:
        return self._submit("load_state", lambda: self._load(path, optimizer=True))

    def save_weights_for_sampler(
        self,
        name: str,
        ttl_seconds: int | None = None,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[types.SaveWeightsForSamplerResponse]:
        """Weights only, under ``tinker://<model_id>/sampler_weights/<name>``."""

        def run() -> types.SaveWeightsForSamplerResponse:
            return types.SaveWeightsForSamplerResponse(
                path=self._save("sampler_weights", name, False, user_metadata, True, ttl_seconds)
            )

        # its clients (``create_sampling_client(path)``) serve it at once: the save includes the load
        hold_s = self._runtime.config.save_hold_s("snapshot")
        return self._submit("save_weights_for_sampler", run, hold_s=hold_s)

    def save_weights_external(
        self, name: str, ttl_seconds: int | None = None, age_encryption_recipients: list[str] | None = None
    ) -> APIFuture[types.SaveWeightsExternalResponse]:
        """The weights as a LoRA adapter under ``tinker://<model_id>/external_weights/<name>``
        (see ``checkpoints.py``); age encryption is not simulated (a ``BadRequestError``)."""

        def run() -> types.SaveWeightsExternalResponse:
            if age_encryption_recipients:
                raise errors.bad_request("age encryption of external weights is not simulated")
            path = self._save("external_weights", name, False, None, True, ttl_seconds)
            return types.SaveWeightsExternalResponse(path=path)

        return self._submit("save_weights_external", run, hold_s=self._runtime.config.save_sampler_s)

    @deprecated(_ASYNC, category=FutureWarning)
    async def save_weights_for_sampler_async(
        self,
        name: str,
        ttl_seconds: int | None = None,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[types.SaveWeightsForSamplerResponse]:
        return self.save_weights_for_sampler(name, ttl_seconds=ttl_seconds, user_metadata=user_metadata)

    # ---- info ----------------------------------------------------------------------------------
    def get_info(self) -> types.GetInfoResponse:
        return self._info

    @deprecated("deprecated in the SDK: use get_info()", category=FutureWarning)
    async def get_info_async(self) -> types.GetInfoResponse:
        return self._info

    def get_tokenizer(self) -> Any:
        from fakes.tokenizer import load_tokenizer

        return load_tokenizer(self._policy.config.base_model.name)

    def get_telemetry(self) -> None:
        return None

    # ---- sampling clients ----------------------------------------------------------------------
    def create_sampling_client(
        self,
        model_path: str,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> ClientFuture[SamplingClient]:
        from .sampling import sampling_client_from_path

        return ClientFuture(
            self._runtime.dispatcher.submit(
                self._runtime.control_pool,
                "create_sampling_client",
                lambda: sampling_client_from_path(
                    self._runtime,
                    model_path,
                    session_id=self.session_id,
                    record_stability_info=record_stability_info,
                ),
            )
        )

    @deprecated("deprecated in the SDK: await create_sampling_client(...) instead", category=FutureWarning)
    async def create_sampling_client_async(
        self,
        model_path: str,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> SamplingClient:
        return await self.create_sampling_client(model_path, retry_config, record_stability_info)

    def save_weights_and_get_sampling_client(
        self,
        name: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
        kind: types.SamplingClientKind = "snapshot",
    ) -> ClientFuture[SamplingClient]:
        """A sampler on the current weights (in memory, no file): a snapshot, or (``kind="inflight"``)
        a new version of this model's shared in-flight target, which existing in-flight clients adopt.

        A snapshot save holds the training queue while the weights are written and loaded, an
        in-flight save only while they are written (``SimConfig.save_hold_s``), and publishes them
        as it completes: they reach samplers ``SimConfig.inflight_visible_after_s`` later
        (:mod:`fakes.tinker.inflight`)."""
        from .sampling import SamplingClient

        if name is not None:
            warnings.warn("the 'name' parameter has no effect", DeprecationWarning, stacklevel=2)
        if kind not in ("snapshot", "inflight"):
            raise ValueError(f"kind must be 'snapshot' or 'inflight', got {kind!r}")

        def run() -> SamplingClient:
            self._sampler_saves += 1
            version, policy = self._sampler_saves, self._policy.frozen_copy()
            weights: Snapshot | InflightClientWeights
            if kind == "inflight":
                if self._inflight is None:
                    self._inflight = InflightTarget(self._runtime.config.inflight_visible_after_s)
                self._inflight.publish(version, policy)
                weights = InflightClientWeights(self._inflight, version)
            else:
                weights = Snapshot(policy, version)
            return SamplingClient(
                self._runtime,
                weights,
                model_path=None,
                session_id=self.session_id,
                record_stability_info=record_stability_info,
            )

        return ClientFuture(
            self._runtime.dispatcher.submit(
                self._queue,
                "save_weights_for_sampler",
                run,
                hold_s=self._runtime.config.save_hold_s(kind),
                effect_at_end=kind == "inflight",  # no sampler sees the version before its save completes
            )
        )

    @deprecated(
        "deprecated in the SDK: await save_weights_and_get_sampling_client(...) instead",
        category=FutureWarning,
    )
    async def save_weights_and_get_sampling_client_async(
        self,
        name: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
        kind: types.SamplingClientKind = "snapshot",
    ) -> SamplingClient:
        return await self.save_weights_and_get_sampling_client(
            name, retry_config, record_stability_info, kind
        )
