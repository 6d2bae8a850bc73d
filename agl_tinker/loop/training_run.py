"""One training run's state and what its steps do with it: :class:`TrainingRun`.

:func:`agl_tinker.loop.train.train` drives the steps; this module holds what they share (the
training client, the endpoint, datasets, retries, progress) and does each part of a step:
dispatch a batch through the store and rebuild its trajectories (the pure core), evaluate,
train (the cookbook's ``train_step``) and swap the new weights into the endpoint, checkpoint,
resume. The asynchronous loop (:mod:`agl_tinker.loop.async_loop`) and the several-policy loop
(:mod:`agl_tinker.loop.policies`, a subclass) reuse it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agentlightning.store.base import LightningStore
from agentlightning.types import RolloutConfig
from tinker_cookbook import checkpoint_utils, model_info
from tinker_cookbook.checkpoint_utils import CheckpointRecord
from tinker_cookbook.rl.types import TrajectoryGroup

from agl_tinker import backend
from agl_tinker.core.align import AlignOptions
from agl_tinker.core.reconstruct import ReconstructOptions
from agl_tinker.core.trajectory import RolloutTrajectory, rollout_trajectory
from agl_tinker.dispatch.batch import (
    BatchResult,
    DispatchConfig,
    RolloutsLost,
    StoreCallError,
    dispatch_batch,
)
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint
from agl_tinker.loop.batch_metrics import batch_metrics, rollout_status, served_calls
from agl_tinker.loop.checkpoints import (
    AtomicCheckpointIndex,
    no_usable_checkpoint,
    resume_candidates,
    set_aside,
)
from agl_tinker.loop.config import PROVENANCE_LOSSES, TrainConfig
from agl_tinker.loop.data import TaskDataset
from agl_tinker.loop.errors import NoTrainableRollouts, StoreLost
from agl_tinker.loop.progress import ProgressDisplay, step_label
from agl_tinker.loop.step_metrics import StepTimes, step_row
from agl_tinker.loop.step_trainer import BusyClock, Learner, StepTrainer
from agl_tinker.run.flat_reward import group_reward_metrics
from agl_tinker.runners.supervise import RESTARTS
from agl_tinker.tinker_retry import (
    Retrier,
    RetryingSamplingClient,
    RetryingTrainingClient,
    RetryPolicy,
    TinkerCallError,
    is_transient,
)
from agl_tinker.viewer.writer import TranscriptWriter

__all__ = ["LLM_RESOURCE", "STALL_GRACE_S", "TrainingRun", "has_metrics"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

LLM_RESOURCE = "main_llm"
"""Resource name runners look up (Agent-lightning's ``@rollout`` agents take the first LLM)."""

STALL_GRACE_S = 5.0
"""Added to ``rollout_timeout_s * max_attempts`` for the stall deadline: the store's timeout
watchdog runs on a tick (about a second) and a timed-out attempt may be requeued."""


class TrainingRun:
    """State shared by the steps of one run (clients, endpoint, logger, datasets)."""

    def __init__(
        self,
        config: TrainConfig,
        store: LightningStore,
        train_ds: TaskDataset,
        val_ds: TaskDataset | None,
        service: Any,
        show_progress: bool,
        n_steps: int,
        *,
        runner_stats: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config
        self.n_steps = n_steps
        self.store = store
        self.train_ds = train_ds
        self.val_ds = val_ds
        self.service = service
        self.tokenizer = backend.get_tokenizer(config.model_name)
        self.renderer_name = config.renderer_name or model_info.get_recommended_renderer_name(
            config.model_name
        )
        self.reward_options = config.reward_options()
        # Token ids are checked against the vocabulary the endpoint samples from (issue 14).
        self.reconstruct_options = ReconstructOptions(
            vocab_size=len(self.tokenizer),
            max_abs_reward=config.max_abs_reward,
            agent_match=config.agent_match,
            model_match=config.model_match,
        )
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
        self.endpoint: Endpoint | None = None
        self.training_client: Any = None
        self.kl_reference: Any = None
        self.train_resources_id: str | None = None
        self.val_resources_id: str | None = None
        self.empty_steps = 0
        self.policy_checkpoints: dict[str, dict[str, str]] = {}
        """Several policies only: the paths of each policy's latest checkpoint."""
        self.runner_stats: Mapping[str, int] = runner_stats if runner_stats is not None else {}
        """The live runner-fault counts of the strategy running the runners (see :func:`train`)."""
        self._restarts_reported = 0

    def take_runner_restarts(self) -> int:
        """Runner restarts since the previous call (the strategy's counts are cumulative)."""
        total = int(self.runner_stats.get(RESTARTS, 0))
        taken, self._restarts_reported = total - self._restarts_reported, total
        return taken

    def policy_dirs(self) -> dict[str, Path]:
        """Several policies only: policy name -> its directory (checkpoints, reward curve)."""
        return {}

    # -- setup ---------------------------------------------------------------------------------

    async def create_training_client(self, state_path: str | None) -> None:
        """A fresh LoRA training client, or one loaded from ``state_path`` (weights + optimiser)."""
        cfg = self.config
        if state_path is not None:
            client = await self.retrier.call(
                "create_training_client",
                lambda: self.service.create_training_client_from_state_with_optimizer(state_path),
            )
        else:
            client = await self.retrier.call(
                "create_training_client",
                lambda: self.service.create_lora_training_client(
                    cfg.model_name, rank=cfg.lora_rank, seed=cfg.seed
                ),
            )
        self.training_client = RetryingTrainingClient(client, self.retrier)

    async def start(self, start_step: int) -> None:
        """Serve the current weights (after :meth:`create_training_client`) and register them."""
        cfg = self.config
        if cfg.kl_penalty_coef > 0:
            reference = await self.retrier.call(
                "create_sampling_client",
                lambda: self.service.create_sampling_client(base_model=cfg.model_name),
            )
            self.kl_reference = RetryingSamplingClient(reference, self.retrier)
        learner = self.learners()[0]
        sampling_client = await learner.sampling_client()
        self.endpoint = await start_endpoint(
            EndpointConfig(
                mode=cfg.endpoint_mode,
                host=cfg.endpoint_host,
                port=cfg.endpoint_port,
                public_host=cfg.endpoint_public_host,
                renderer_name=self.renderer_name,
                token_in_token_out=cfg.token_in_token_out,
                max_context_tokens=cfg.max_context_tokens,
                default_max_tokens=cfg.max_tokens,
                model_aliases=tuple(cfg.model_aliases),
            ),
            store=self.store,
            sampling_client=sampling_client,
            base_model=cfg.model_name,
            tokenizer=self.tokenizer,
            weights_version=start_step,
            records_stability_info=learner.records_stability_info,
        )
        self.train_resources_id = await self._add_llm_resource(cfg.temperature)
        self.val_resources_id = await self._add_llm_resource(cfg.eval_temperature)

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

    def process(self, rollout: Any, spans: Sequence[Any]) -> RolloutTrajectory:
        """A finished rollout and its spans as a trajectory, by the pure core (one rule for all loops)."""
        return rollout_trajectory(
            spans,
            status=rollout_status(rollout),
            decode=self.tokenizer.decode,
            reconstruct_options=self.reconstruct_options,
            align_options=self.align_options,
            reward_options=self.reward_options,
            served_calls=served_calls(rollout),
        )

    def stall_timeout_s(self) -> float | None:
        """No rollout finished for this long: nothing will (see :data:`STALL_GRACE_S`)."""
        cfg = self.config
        if cfg.rollout_timeout_s is None:
            return None
        return cfg.rollout_timeout_s * cfg.max_attempts + STALL_GRACE_S

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

    async def run_batch(
        self, tasks: Sequence[Mapping[str, Any]], group_size: int, mode: str, label: str, step: int
    ) -> BatchResult[RolloutTrajectory]:
        return await self.dispatch(tasks, group_size, mode, label, step, self.process)

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
        rollout_config = RolloutConfig(
            timeout_seconds=cfg.rollout_timeout_s,
            max_attempts=cfg.max_attempts,
            retry_condition=["failed", "timeout", "unresponsive"] if cfg.max_attempts > 1 else [],
        )
        dispatch = DispatchConfig(
            mode="train" if mode == "train" else "val",
            resources_id=self.train_resources_id if mode == "train" else self.val_resources_id,
            rollout_config=rollout_config,
            max_in_flight=cfg.max_in_flight,
            batch_timeout_s=cfg.batch_timeout_s,
            stall_timeout_s=self.stall_timeout_s() if cfg.batch_timeout_s is None else None,
            # The endpoint stores spans off the request path: store them before reading a rollout's.
            before_read=self.endpoint.flush if self.endpoint is not None else None,
            # It counts the calls it served: a rollout's spans holding fewer lost the rest.
            call_counts=self.endpoint,
        )
        self.progress.begin(label, len(tasks) * group_size)
        try:
            batch = await dispatch_batch(
                self.store,
                tasks,
                group_size,
                process,
                config=dispatch,
                on_progress=self.progress.update,
            )
        except (StoreCallError, RolloutsLost) as exc:
            raise StoreLost(self.lost_message(step, exc)) from exc
        finally:
            self.progress.end()
        return batch

    # -- one step ------------------------------------------------------------------------------

    async def evaluate(self, step: int) -> dict[str, Any]:
        assert self.val_ds is not None
        t0 = time.perf_counter()
        tasks = self.val_ds.get_batch(0)
        await self.check_store(step)
        batch = await self.run_batch(tasks, 1, "val", f"eval @ step {step}", step)
        _, metrics = batch_metrics(batch, step, prefix="eval/")
        metrics.update(self.transcripts.write(step, batch.groups, kind="eval"))
        metrics["eval/time_s"] = time.perf_counter() - t0
        return metrics

    async def train_step(self, step: int) -> dict[str, Any]:
        """One synchronous step: dispatch a batch, train every policy on it, serve the new weights."""
        assert self.endpoint is not None
        t0 = time.perf_counter()
        tasks = self.train_ds.get_batch(step)
        await self.check_store(step)
        batch = await self.run_batch(
            tasks, self.config.group_size, "train", step_label(step, self.n_steps), step
        )
        t_sampled = time.perf_counter()
        _, metrics = batch_metrics(batch, step)
        metrics.update(self.transcripts.write(step, batch.groups))
        clock = BusyClock()
        learner = self.learners()[0]
        trainer = StepTrainer(learner, self.config, clock, self.config.batch_size, stream=None)
        for group in batch.groups:
            await trainer.add(group.group_index, group.results)
        await trainer.finish()
        self.check_trainable(step, batch, trainer.valid)
        metrics.update(trainer.metrics())
        metrics.update(group_reward_metrics(trainer.valid))
        t_trained = time.perf_counter()
        await learner.publish(self.endpoint, step + 1, clock)
        t_end = time.perf_counter()
        metrics.update(self.retrier.take_metrics())
        times = StepTimes(
            step_s=t_end - t0,
            sampling_s=t_sampled - t0,
            waiting_s=batch.stats.wait_s,
            processing_s=batch.stats.process_s,
            training_s=t_trained - t_sampled,
            swap_s=t_end - t_trained,
            trainer_busy_s=clock.busy_s,
            sampler_idle_s=t_end - t_sampled,
        )
        metrics.update(
            step_row(
                batch,
                step,
                epoch=self.train_ds.epoch_of(step),
                times=times,
                runner_restarts=self.take_runner_restarts(),
            )
        )
        metrics.update(self.endpoint.span_metrics())  # spans the recorder could not store
        return metrics

    def learners(self) -> list[Learner]:
        """The training side of each policy of the run (a list of one for a single policy)."""
        cfg = self.config
        return [
            Learner(
                None,
                self.training_client,
                cfg.learning_rate,
                cfg.num_substeps,
                self.kl_reference,
                records_stability_info=cfg.loss_fn in PROVENANCE_LOSSES,
                sampling_client_kind=cfg.sampling_client_kind,
            )
        ]

    def check_trainable(
        self, step: int, batch: BatchResult[RolloutTrajectory], groups: list[TrajectoryGroup]
    ) -> None:
        """Log a step with nothing to train on as an error; too many in a row stop the run."""
        if groups:
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

    async def checkpoint(
        self, name: str, next_step: int, *, final: bool = False, extra: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        loop_state: dict[str, Any] = {**(extra or {}), "batch": next_step}
        if final:
            loop_state["final"] = True
        return await checkpoint_utils.save_checkpoint_async(
            self.training_client,
            name,
            self.config.log_path,
            loop_state,
            kind="both",
            store=AtomicCheckpointIndex(self.config.log_path),
        )

    async def resume(self) -> CheckpointRecord | None:
        """Create the training client from the newest loadable checkpoint; the one used, if any.

        A checkpoint whose state cannot be loaded (other than a Tinker outage, which raises) is
        reported by path and the previous one is tried. Without any, a directory holding an
        earlier run's metrics is refused unless ``fresh_start``; with ``fresh_start`` its files
        are renamed aside and the run starts over.
        """
        log_path = self.config.log_path
        if self.config.fresh_start:
            for moved in set_aside(log_path):
                logger.warning("fresh_start: kept the earlier run's file as %s", moved)
            await self.create_training_client(None)
            return None
        candidates = resume_candidates(log_path)
        for record in candidates:
            try:
                await self.create_training_client(record.state_path)
            except TinkerCallError as exc:
                if is_transient(exc.error):
                    raise  # the service is down, not the checkpoint
                logger.error(
                    "checkpoint %r (batch %s, %s) cannot be loaded, trying the previous one: %s",
                    record.name,
                    record.batch,
                    record.state_path,
                    exc.error,
                )
                continue
            return record
        if candidates or has_metrics(log_path):
            raise no_usable_checkpoint(log_path, candidates)
        await self.create_training_client(None)
        return None


def has_metrics(log_path: str | Path) -> bool:
    """``log_path`` holds metrics of an earlier run (a resume needs its checkpoint)."""
    path = Path(log_path) / "metrics.jsonl"
    return path.exists() and path.stat().st_size > 0
