"""``ServiceClient`` of the simulator: the entry point, with the SDK's signature.

Simulator knobs ride in the SDK's ``**kwargs`` (which the real client ignores):
``config=SimConfig(...)`` or any ``SimConfig`` field by name (``latency_s``, ``failure_rate``,
``failure_seed``, ``drift``, ``background_eps``, ``root_dir``); ``AGL_TINKER_SIM_*`` variables
fill in what is not given.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

from tinker import types
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture
from tinker.lib.public_interfaces.custom_loss import LossHandle, PerDatumLossFn, encode_graph, trace_loss
from typing_extensions import deprecated

from . import errors
from .catalog import resolve
from .checkpoints import TinkerPath
from .config import SimConfig
from .futures import ClientFuture, completed
from .optim import Adam
from .policy import Policy, PolicyConfig, initial_params
from .rest import RestClient, capabilities
from .runtime import Runtime
from .sampling import SamplingClient, base_sampling_client, policy_from_meta, sampling_client_from_path
from .training import TrainingClient, policy_meta
from .vocab import load_vocab

_KNOBS = {f.name for f in dataclasses.fields(SimConfig)}


class ServiceClient:
    """Creates training and sampling clients of the simulated service."""

    def __init__(
        self,
        user_metadata: dict[str, str] | None = None,
        project_id: str | None = None,
        *,
        display_name: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        default_headers_overrides: Mapping[str, str] | None = None,
        **kwargs: Any,
    ):
        config = kwargs.pop("config", None)
        knobs = {k: kwargs.pop(k) for k in list(kwargs) if k in _KNOBS}
        if kwargs:
            warnings.warn(
                f"ServiceClient ignores unsupported arguments: {', '.join(sorted(kwargs))}.",
                FutureWarning,
                stacklevel=2,
            )
        if config is None:
            config = SimConfig.from_env(**knobs)
        elif knobs:
            config = dataclasses.replace(config, **knobs)
        self.config: SimConfig = config
        self._user_metadata = user_metadata
        self._runtime = Runtime(config)
        self._closed = False
        self._custom_loss_seq = itertools.count()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close("success" if exc_type is None else "errored").result()

    def close(
        self, status: Literal["success", "errored", "interrupted"], detail: str | None = None
    ) -> AwaitableConcurrentFuture[None]:
        self._closed = True
        return completed(None)

    def get_console_url(self) -> str:
        return f"sim://sessions/{self._runtime.session_id}"

    def get_telemetry(self) -> None:
        return None

    # ---- helpers ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("ServiceClient is closed")

    def _create(self, operation: str, fn: Any) -> ClientFuture[Any]:
        self._check_open()
        return ClientFuture(self._runtime.dispatcher.submit(self._runtime.control_pool, operation, fn))

    def _register(
        self,
        policy: Policy,
        optimizer: Adam,
        user_metadata: dict[str, str] | None,
        model_id: str | None = None,
    ) -> TrainingClient:
        model_id = model_id or self._runtime.new_model_id()
        info = {
            **policy_meta(policy.config),
            "user_metadata": user_metadata,
            "time": datetime.now(UTC).isoformat(),
        }
        self._runtime.store.write_run(model_id, info)
        return TrainingClient(self._runtime, model_id, policy, optimizer)

    # ---- training clients ------------------------------------------------------------------------
    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A fresh LoRA run whose initial policy is the base model's prior."""
        assert any([train_mlp, train_attn, train_unembed]), (
            "At least one of train_mlp, train_attn, or train_unembed must be True"
        )
        return self._create_lora(
            base_model, rank, seed, train_mlp, train_attn, train_unembed, user_metadata, optimizer
        )

    def _create_lora(
        self,
        base_model: str,
        rank: int,
        seed: int | None,
        train_mlp: bool,
        train_attn: bool,
        train_unembed: bool,
        user_metadata: dict[str, str] | None,
        optimizer: types.OptimizerConfig | None,
        model_id: str | None = None,
    ) -> ClientFuture[TrainingClient]:
        """``create_lora_training_client``; ``model_id`` lets the wire server name the run."""

        def run() -> TrainingClient:
            if rank < 1:
                raise errors.bad_request(f"rank must be >= 1, got {rank}", path="models/create")
            if optimizer is not None and getattr(optimizer, "type", "adamw") != "adamw":
                raise errors.bad_request("the simulator trains with Adam only", path="models/create")
            config = PolicyConfig(
                base_model=resolve(base_model),
                rank=rank,
                seed=seed if seed is not None else secrets.randbits(31),
                train_attn=train_attn,
                train_mlp=train_mlp,
                train_unembed=train_unembed,
                background_eps=self.config.background_eps,
                drift=self.config.drift,
            )
            vocab = load_vocab(config.base_model.vocabulary)
            policy = Policy(config, vocab, initial_params(config, vocab))
            for tensor in policy.trainable_params().values():
                tensor.requires_grad_(True)
            return self._register(policy, Adam(policy.trainable_params()), user_metadata, model_id)

        return self._create("create_model", run)

    @deprecated(
        "deprecated in the SDK: await create_lora_training_client(...) instead", category=FutureWarning
    )
    async def create_lora_training_client_async(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> TrainingClient:
        return await self.create_lora_training_client(
            base_model, rank, seed, train_mlp, train_attn, train_unembed, user_metadata, optimizer
        )

    def _from_state(
        self,
        path: str,
        base_model: str | None,
        user_metadata: dict[str, str] | None,
        with_optimizer: bool,
        model_id: str | None = None,
    ) -> ClientFuture[TrainingClient]:
        def run() -> TrainingClient:
            parsed = TinkerPath.parse(path)
            if parsed.kind != "weights":
                raise errors.bad_request(f"{path} is sampler weights; training resumes from .../weights/...")
            snapshot = self._runtime.store.load(parsed)
            meta = dict(snapshot.meta)
            if base_model is not None:
                resolve(base_model)
                meta["base_model"] = base_model
            policy = policy_from_meta(self._runtime, meta, snapshot.params)
            for tensor in policy.trainable_params().values():
                tensor.requires_grad_(True)
            optimizer = Adam(policy.trainable_params())
            if with_optimizer:
                if snapshot.optimizer is None:
                    raise errors.bad_request(f"{path} has no optimizer state")
                optimizer.load_state_dict(snapshot.optimizer)
            return self._register(policy, optimizer, user_metadata, model_id)

        return self._create("load_weights", run)

    def create_training_client_from_state(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A new run starting from saved weights, with a fresh optimizer."""
        return self._from_state(path, base_model, user_metadata, with_optimizer=False)

    @deprecated("deprecated in the SDK: await create_training_client_from_state(...)", category=FutureWarning)
    async def create_training_client_from_state_async(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> TrainingClient:
        return await self.create_training_client_from_state(
            path,
            base_model=base_model,
            user_metadata=user_metadata,
            weights_access_token=weights_access_token,
        )

    def create_training_client_from_state_with_optimizer(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
    ) -> ClientFuture[TrainingClient]:
        """A new run starting from saved weights and Adam state (exact resume)."""
        return self._from_state(path, base_model, user_metadata, with_optimizer=True)

    @deprecated(
        "deprecated in the SDK: await create_training_client_from_state_with_optimizer(...)",
        category=FutureWarning,
    )
    async def create_training_client_from_state_with_optimizer_async(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
    ) -> TrainingClient:
        return await self.create_training_client_from_state_with_optimizer(
            path,
            base_model=base_model,
            user_metadata=user_metadata,
            weights_access_token=weights_access_token,
        )

    # ---- sampling clients ------------------------------------------------------------------------
    def create_sampling_client(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> ClientFuture[SamplingClient]:
        """A sampler on saved weights (``model_path``) or on the untrained base model."""
        if model_path is None and base_model is None:
            raise ValueError("Either model_path or base_model must be provided")

        def run() -> SamplingClient:
            if model_path is not None:
                return sampling_client_from_path(
                    self._runtime, model_path, record_stability_info=record_stability_info
                )
            assert base_model is not None
            resolve(base_model)
            return base_sampling_client(
                self._runtime, base_model, record_stability_info=record_stability_info
            )

        return self._create("create_sampling_session", run)

    @deprecated("deprecated in the SDK: await create_sampling_client(...) instead", category=FutureWarning)
    async def create_sampling_client_async(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> SamplingClient:
        return await self.create_sampling_client(
            model_path=model_path,
            base_model=base_model,
            retry_config=retry_config,
            record_stability_info=record_stability_info,
        )

    # ---- custom losses ---------------------------------------------------------------------------
    def create_custom_loss(
        self, fn: PerDatumLossFn, input_ranks: Mapping[str, types.CustomLossInputRank]
    ) -> AwaitableConcurrentFuture[LossHandle]:
        """The SDK's tracing and checks, then the loss stored as the service stores an uploaded one
        (``custom_losses.py``): its handle carries a ``loss_id`` that ``forward_backward_custom`` sends."""
        self._check_open()
        handle = trace_loss(fn, input_ranks, self._runtime.session_id)
        seq_id = next(self._custom_loss_seq)

        def run() -> LossHandle:
            create = self._runtime.custom_losses.create
            loss_id = create(handle.session_id, seq_id, handle.name, handle.inputs, encode_graph(handle))
            return dataclasses.replace(handle, loss_id=loss_id)

        return self._runtime.dispatcher.call(self._runtime.control_pool, "create_custom_loss", run)

    # ---- REST ------------------------------------------------------------------------------------
    @deprecated("deprecated in the SDK: use RestClient().get_server_capabilities()", category=FutureWarning)
    def get_server_capabilities(self) -> types.GetServerCapabilitiesResponse:
        return capabilities()

    @deprecated("deprecated in the SDK: use RestClient().get_server_capabilities()", category=FutureWarning)
    async def get_server_capabilities_async(self) -> types.GetServerCapabilitiesResponse:
        return capabilities()

    @deprecated("deprecated in the SDK: construct RestClient directly", category=FutureWarning)
    def create_rest_client(self) -> RestClient:
        return RestClient(self._runtime)
