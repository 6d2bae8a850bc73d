"""The slice of ``RestClient`` the cookbook uses: training runs, checkpoints, capabilities."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture
from typing_extensions import deprecated

from fakes.lineup import CATALOG

from .checkpoints import TinkerPath

if TYPE_CHECKING:
    from .runtime import Runtime

_ASYNC = "deprecated in the SDK: await the APIFuture the method without _async returns"


def capabilities() -> types.GetServerCapabilitiesResponse:
    return types.GetServerCapabilitiesResponse(
        supported_models=[
            types.SupportedModel(
                model_name=m.name, max_context_length=m.max_context_length, trainable=True, sampleable=True
            )
            for m in CATALOG.values()
        ]
    )


class RestClient:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _call(self, operation: str, fn):  # type: ignore[no-untyped-def]
        return self._runtime.dispatcher.call(self._runtime.control_pool, operation, fn)

    def _training_run(self, run_id: str) -> types.TrainingRun:
        info = self._runtime.store.read_run(run_id)
        checkpoints = self._runtime.store.list(run_id)
        training = [c for c in checkpoints if c.checkpoint_type == "training"]
        sampler = [c for c in checkpoints if c.checkpoint_type == "sampler"]
        return types.TrainingRun(
            training_run_id=run_id,
            base_model=info["base_model"],
            model_owner="sim",
            is_lora=True,
            lora_rank=info["rank"],
            last_request_time=datetime.fromisoformat(info.get("time", datetime.now(UTC).isoformat())),
            last_checkpoint=training[-1] if training else None,
            last_sampler_checkpoint=sampler[-1] if sampler else None,
            user_metadata=info.get("user_metadata"),
        )

    def get_server_capabilities(self) -> APIFuture[types.GetServerCapabilitiesResponse]:
        return self._call("get_server_capabilities", capabilities)

    def get_training_run(
        self, training_run_id: types.ModelID, access_scope: Literal["owned", "accessible"] = "owned"
    ) -> APIFuture[types.TrainingRun]:
        return self._call("get_training_run", lambda: self._training_run(training_run_id))

    @deprecated(_ASYNC, category=FutureWarning)
    async def get_training_run_async(
        self, training_run_id: types.ModelID, access_scope: Literal["owned", "accessible"] = "owned"
    ) -> types.TrainingRun:
        return await self.get_training_run(training_run_id, access_scope)

    def get_training_run_by_tinker_path(
        self, tinker_path: str, access_scope: Literal["owned", "accessible"] = "owned"
    ) -> APIFuture[types.TrainingRun]:
        return self._call(
            "get_training_run", lambda: self._training_run(TinkerPath.parse(tinker_path).run_id)
        )

    @deprecated(_ASYNC, category=FutureWarning)
    async def get_training_run_by_tinker_path_async(
        self, tinker_path: str, access_scope: Literal["owned", "accessible"] = "owned"
    ) -> types.TrainingRun:
        return await self.get_training_run_by_tinker_path(tinker_path, access_scope)

    def list_checkpoints(self, training_run_id: types.ModelID) -> APIFuture[types.CheckpointsListResponse]:
        return self._call(
            "list_checkpoints",
            lambda: types.CheckpointsListResponse(checkpoints=self._runtime.store.list(training_run_id)),
        )

    @deprecated(_ASYNC, category=FutureWarning)
    async def list_checkpoints_async(self, training_run_id: types.ModelID) -> types.CheckpointsListResponse:
        return await self.list_checkpoints(training_run_id)

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> APIFuture[None]:
        return self._call(
            "delete_checkpoint", lambda: self._runtime.store.delete(TinkerPath.parse(tinker_path))
        )

    @deprecated(_ASYNC, category=FutureWarning)
    async def delete_checkpoint_from_tinker_path_async(self, tinker_path: str) -> None:
        return await self.delete_checkpoint_from_tinker_path(tinker_path)

    def get_telemetry(self) -> None:
        return None
