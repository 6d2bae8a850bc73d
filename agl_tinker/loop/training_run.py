"""One training run's state and the parts of a step that need it: :class:`TrainingRun`.

:func:`agl_tinker.loop.train.train` drives the steps through a schedule
(:mod:`agl_tinker.loop.schedules`) and the one step (:mod:`agl_tinker.loop.step`); this module
holds what they share (the run's policies and their clients, the endpoint, datasets, retries,
progress) and does the parts of a step that need it: read a finished rollout once per policy
(the pure core), dispatch a batch through the store, evaluate, serve the policies, check the
store, count steps that trained nothing. A single-policy run is a list of one policy.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agentlightning.store.base import LightningStore
from agentlightning.types import RolloutConfig
from tinker_cookbook import model_info
from tinker_cookbook.checkpoint_utils import CheckpointRecord

from agl_tinker import backend
from agl_tinker.core.align import AlignOptions
from agl_tinker.core.reconstruct import ReconstructOptions
from agl_tinker.core.trajectory import RolloutTrajectory, rollout_trajectory
from agl_tinker.dispatch.batch import dispatch_batch
from agl_tinker.dispatch.types import (
    BatchResult,
    DispatchConfig,
    RolloutsLost,
    StoreCallError,
)
from agl_tinker.endpoint.start import (
    Endpoint,
    EndpointConfig,
    PolicyServing,
    start_endpoint,
    start_policy_endpoint,
)
from agl_tinker.loop.batch_metrics import rollout_status, served_calls
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.data import TaskDataset
from agl_tinker.loop.errors import NoTrainableRollouts, StoreLost
from agl_tinker.loop.policy import Policy, PolicyResults, make_policies
from agl_tinker.loop.policy_clients import PolicyClients
from agl_tinker.loop.policy_metrics import rollout_metrics, write_transcripts
from agl_tinker.loop.progress import ProgressDisplay
from agl_tinker.loop.step_trainer import Learner
from agl_tinker.tinker_retry import Retrier, RetryPolicy
from agl_tinker.viewer.writer import TranscriptWriter

__all__ = ["LLM_RESOURCE", "STALL_GRACE_S", "TrainingRun"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

LLM_RESOURCE = "main_llm"
"""Resource name runners look up (Agent-lightning's ``@rollout`` agents take the first LLM)."""

STALL_GRACE_S = 5.0
"""Added to ``rollout_timeout_s * max_attempts`` for the stall deadline: the store's timeout
watchdog runs on a tick (about a second) and a timed-out attempt may be requeued."""


class TrainingRun:
    """State shared by the steps of one run (policies, clients, endpoint, datasets, logs)."""

    def __init__(
        self,
        config: TrainConfig,
        store: LightningStore,
        train_ds: TaskDataset,
        val_ds: TaskDataset | None,
        service: Any,
        show_progress: bool,
        n_steps: int,
    ) -> None:
        self.config = config
        self.n_steps = n_steps
        self.store = store
        self.train_ds = train_ds
        self.val_ds = val_ds
        self.service = service
        self.tokenizer = backend.get_tokenizer(config.model_name)
        renderer_name = config.renderer_name or model_info.get_recommended_renderer_name(config.model_name)
        # Token ids are checked against the vocabulary the endpoint samples from (issue 14).
        reconstruct_options = ReconstructOptions(
            vocab_size=len(self.tokenizer),
            max_abs_reward=config.max_abs_reward,
            agent_match=config.agent_match,
            model_match=config.model_match,
        )
        self.policies: list[Policy] = make_policies(
            config, self.tokenizer, renderer_name, reconstruct_options
        )
        self.names: list[str | None] = [p.name for p in self.policies]
        self.align_options = AlignOptions(on_gap=config.on_gap)
        self.progress = ProgressDisplay(enabled=show_progress, flat_steps=config.warn_flat_reward_steps)
        self.transcripts = TranscriptWriter(
            config.log_path,
            sample=config.transcripts_per_step,
            decode=self.tokenizer.decode,
            min_valid=config.min_valid_per_group,
        )
        self.retrier = Retrier(
            RetryPolicy(
                max_attempts=config.tinker_max_attempts,
                base_delay_s=config.tinker_retry_base_s,
                max_delay_s=config.tinker_retry_max_s,
            ),
            seed=config.seed,
        )
        self.clients = PolicyClients(self.policies, service, self.retrier, config.log_path, config.seed)
        self.endpoint: Endpoint | None = None
        self.session_start = 0  # the weights version start() served first
        self.train_resources_id: str | None = None
        self.val_resources_id: str | None = None
        self.empty_steps = 0

    def policy_dirs(self) -> dict[str, Path]:
        """Several policies only: policy name -> its directory (checkpoints, reward curve)."""
        return {p.name: p.log_dir for p in self.policies if p.name is not None}

    def learners(self) -> list[Learner]:
        """The training side of each policy, in order (a list of one for a single policy)."""
        return [p.learner(self.config, self.session_start) for p in self.policies]

    # -- setup ---------------------------------------------------------------------------------

    async def resume(self) -> CheckpointRecord | None:
        """Create every policy's training client, from the newest loadable checkpoint if any
        (:meth:`PolicyClients.resume`); the checkpoint used."""
        return await self.clients.resume(self.config.fresh_start)

    async def checkpoint(
        self, name: str, next_step: int, *, final: bool = False, extra: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """Checkpoint every policy (:meth:`PolicyClients.checkpoint`); the first policy's paths."""
        return await self.clients.checkpoint(name, next_step, final=final, extra=extra)

    async def start(self, start_step: int) -> None:
        """Serve every policy's current weights (after :meth:`resume`) and register them."""
        cfg = self.config
        self.session_start = start_step  # calls recording an older version were an earlier session's
        if cfg.kl_penalty_coef > 0:
            await self.clients.create_kl_references()
        served: dict[str | None, PolicyServing] = {}
        for learner, policy in zip(self.learners(), self.policies, strict=True):
            served[policy.name] = PolicyServing(
                sampling_client=await learner.sampling_client(),
                base_model=policy.model_name,
                tokenizer=policy.tokenizer,
                models=policy.models,
                renderer_name=policy.renderer_name,
                weights_version=start_step,
                records_stability_info=learner.records_stability_info,
            )
        self.endpoint = await self._serve(served)
        self.train_resources_id = await self._add_llm_resource(cfg.temperature)
        self.val_resources_id = await self._add_llm_resource(cfg.eval_temperature)

    async def _serve(self, served: Mapping[str | None, PolicyServing]) -> Endpoint:
        """One endpoint for the policies: one policy as ``endpoint_mode`` says, several on the lean one."""
        cfg = self.config
        common = EndpointConfig(
            host=cfg.endpoint_host,
            port=cfg.endpoint_port,
            public_host=cfg.endpoint_public_host,
            token_in_token_out=cfg.token_in_token_out,
            max_context_tokens=cfg.max_context_tokens,
            default_max_tokens=cfg.max_tokens,
        )
        if None in served:
            only = served[None]
            return await start_endpoint(
                dataclasses.replace(
                    common,
                    mode=cfg.endpoint_mode,
                    renderer_name=only.renderer_name,
                    model_aliases=tuple(cfg.model_aliases),
                ),
                store=self.store,
                sampling_client=only.sampling_client,
                base_model=only.base_model,
                tokenizer=only.tokenizer,
                weights_version=only.weights_version,
                records_stability_info=only.records_stability_info,
            )
        named = {name: s for name, s in served.items() if name is not None}
        return await start_policy_endpoint(common, store=self.store, policies=named)

    async def _add_llm_resource(self, temperature: float) -> str:
        assert self.endpoint is not None
        llm = self.endpoint.as_resource()
        llm.sampling_parameters = {"temperature": temperature, "max_tokens": self.config.max_tokens}
        update = await self.store.add_resources({LLM_RESOURCE: llm})
        return update.resources_id

    async def stop(self) -> None:
        """Stop the endpoint (its span recorder stores what it still holds)."""
        if self.endpoint is not None:
            await self.endpoint.stop()

    # -- rollouts -----------------------------------------------------------------------------

    def process(self, rollout: Any, spans: Sequence[Any]) -> PolicyResults:
        """A finished rollout read once per policy, by the pure core (one rule for every schedule)."""
        spans = list(spans)
        status = rollout_status(rollout)
        served = served_calls(rollout)
        return {
            policy.name: rollout_trajectory(
                spans,
                status=status,
                decode=policy.tokenizer.decode,
                reconstruct_options=policy.reconstruct_options,
                align_options=self.align_options,
                reward_options=policy.reward_options,
                served_calls=served,
            )
            for policy in self.policies
        }

    def stall_timeout_s(self) -> float | None:
        """No rollout finished for this long: nothing will (see :data:`STALL_GRACE_S`)."""
        cfg = self.config
        if cfg.rollout_timeout_s is None:
            return None
        return cfg.rollout_timeout_s * cfg.max_attempts + STALL_GRACE_S

    def dispatch_config(self, mode: str, **limits: Any) -> DispatchConfig:
        """How a batch (``mode="train"`` or ``"val"``) or the continuous stream is dispatched.

        ``limits``: the schedule's own :class:`DispatchConfig` fields (timeouts, in-flight bounds)."""
        cfg = self.config
        rollout_config = RolloutConfig(
            timeout_seconds=cfg.rollout_timeout_s,
            max_attempts=cfg.max_attempts,
            retry_condition=["failed", "timeout", "unresponsive"] if cfg.max_attempts > 1 else [],
        )
        return DispatchConfig(
            mode="train" if mode == "train" else "val",
            resources_id=self.train_resources_id if mode == "train" else self.val_resources_id,
            rollout_config=rollout_config,
            # The endpoint stores spans off the request path: store them before reading a rollout's.
            before_read=self.endpoint.flush if self.endpoint is not None else None,
            # It counts the calls it served: a rollout's spans holding fewer lost the rest.
            call_counts=self.endpoint,
            **limits,
        )

    async def check_store(self, step: int) -> None:
        """Raise :class:`StoreLost` if the store forgot this run's resources (it restarted)."""
        assert self.train_resources_id is not None
        try:
            known = await self.store.get_resources_by_id(self.train_resources_id)
        except Exception as exc:
            raise StoreLost(self.lost_message(step, exc)) from exc
        if known is None:
            raise StoreLost(self.lost_message(step, "it no longer knows this run's resources (restarted?)"))

    def lost_message(self, step: int, why: object) -> str:
        """The :class:`~agl_tinker.loop.errors.StoreLost` message: what was lost and how to resume."""
        return (
            f"lost the LightningStore during step {step}: {why}. Nothing of step {step} was trained; "
            "once the store is back, start the run again with the same log_path to resume from its "
            "last checkpoint"
        )

    async def dispatch(
        self,
        tasks: Sequence[Mapping[str, Any]],
        group_size: int,
        mode: str,
        label: str,
        step: int,
        process: Callable[[Any, Sequence[Any]], _T],
    ) -> BatchResult[_T]:
        """Run ``tasks`` x ``group_size`` rollouts; ``process(rollout, spans)`` makes each result."""
        cfg = self.config
        dispatch = self.dispatch_config(
            mode,
            max_in_flight=cfg.max_in_flight,
            batch_timeout_s=cfg.batch_timeout_s,
            stall_timeout_s=self.stall_timeout_s() if cfg.batch_timeout_s is None else None,
        )
        self.progress.begin(label, len(tasks) * group_size)
        try:
            return await dispatch_batch(
                self.store, tasks, group_size, process, config=dispatch, on_progress=self.progress.update
            )
        except (StoreCallError, RolloutsLost) as exc:
            raise StoreLost(self.lost_message(step, exc)) from exc
        finally:
            self.progress.end()

    async def evaluate(self, step: int) -> dict[str, Any]:
        """Run the validation batch (one rollout per task) on the current weights; its metrics."""
        assert self.val_ds is not None
        t0 = time.perf_counter()
        await self.check_store(step)
        batch = await self.dispatch(
            self.val_ds.get_batch(0), 1, "val", f"eval @ step {step}", step, self.process
        )
        metrics = rollout_metrics(batch, step, self.names, prefix="eval/")
        metrics.update(write_transcripts(self.transcripts, batch, step, self.names, kind="eval"))
        metrics["eval/time_s"] = time.perf_counter() - t0
        return metrics

    def check_trainable(self, step: int, batch: BatchResult[RolloutTrajectory], trained_any: bool) -> None:
        """Log a step with nothing to train on as an error; too many in a row stop the run."""
        if trained_any:
            self.empty_steps = 0
            return
        self.empty_steps += 1
        reasons = Counter(str(o.result.exclusion) for o in batch.outcomes if o.result.exclusion is not None)
        n = len(batch.outcomes)
        if reasons:
            reason, count = reasons.most_common(1)[0]
            why = f"{count} of {n} rollouts excluded as {reason!r}"
        else:
            why = f"no group kept min_valid_per_group={self.config.min_valid_per_group} valid rollouts"
        logger.error(
            "step %d trained on nothing: %s (%d such steps in a row, the run stops at %d)",
            step,
            why,
            self.empty_steps,
            self.config.max_empty_steps,
        )
        if self.config.max_empty_steps and self.empty_steps >= self.config.max_empty_steps:
            raise NoTrainableRollouts(
                f"{self.empty_steps} steps in a row (to step {step}) had no rollout to train on; "
                f"last: {why}. Check the agent (does it fail, or return no reward?) and the runners"
            )
