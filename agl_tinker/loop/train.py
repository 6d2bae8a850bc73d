"""The RL loop: Agent-lightning rollouts in, tinker-cookbook train steps out, new weights hot-swapped.

One step: enqueue a batch of tasks x group_size into the store, wait for the runners (event-driven),
rebuild each rollout's trajectory from its spans (the pure core), turn groups into datums with the
cookbook's own advantage and assembly functions, ``forward_backward`` + ``optim_step`` through the
cookbook's ``train_step``, and swap the new sampling client into the running endpoint. Checkpoints
go through the cookbook's ``checkpoint_utils``; a restarted run resumes at the batch after the last
checkpoint, so no batch is trained twice or skipped.

Faults (``tests/reliability/README.md`` lists each, with what it costs):

* every Tinker call (client creation, sampling, ``forward_backward``, ``optim_step``, saves) is
  retried on transient errors with the SDK's own rules, bounded (:mod:`agl_tinker.loop.retry`), and
  counted per call kind in ``tinker/retries/<kind>``; a non-retryable error stops the run naming
  the call (:class:`~agl_tinker.loop.retry.TinkerCallError`);
* a step always ends: without ``batch_timeout_s``, it ends once no rollout has finished for
  ``rollout_timeout_s * max_attempts + STALL_GRACE_S`` (rollouts still out count as ``timeout``);
* a step that trains nothing is logged as an error with its dominant exclusion reason;
  ``max_empty_steps`` of them in a row stop the run (:class:`NoTrainableRollouts`);
* a store that stops answering, or restarts and forgets the run's rollouts, stops the run within
  seconds (:class:`StoreLost`): a fresh store knows neither the rollouts in flight nor the
  resources they run against, so the step cannot be finished there, and a restart of the run
  resumes from its last checkpoint;
* the checkpoint index is replaced atomically; on resume a corrupt checkpoint is reported and the
  previous one used; a directory with metrics but no index refuses to start unless
  ``fresh_start``; the metrics rows of redone steps are dropped (:mod:`agl_tinker.loop.checkpoints`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentlightning.store.base import LightningStore
from agentlightning.types import RolloutConfig
from tinker_cookbook import checkpoint_utils, model_info
from tinker_cookbook.checkpoint_utils import CheckpointRecord
from tinker_cookbook.rl.train import train_step
from tinker_cookbook.rl.types import TrajectoryGroup
from tinker_cookbook.utils import ml_log

from agl_tinker import backend
from agl_tinker.core.align import AlignOptions
from agl_tinker.core.reconstruct import ReconstructOptions
from agl_tinker.core.rewards import final_status
from agl_tinker.core.tool_health import tool_health_metrics
from agl_tinker.core.trajectory import (
    RolloutTrajectory,
    exclusion_counts,
    problem_metrics,
    rollout_trajectory,
)
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint
from agl_tinker.loop.checkpoints import (
    AtomicCheckpointIndex,
    ResumeError,
    no_usable_checkpoint,
    resume_candidates,
    set_aside,
    truncate_metrics,
)
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.data import TaskDataset, build_datasets
from agl_tinker.loop.datums import group_datums
from agl_tinker.loop.progress import ProgressDisplay, step_label
from agl_tinker.loop.report import write_reward_curve
from agl_tinker.loop.retry import (
    Retrier,
    RetryingSamplingClient,
    RetryingTrainingClient,
    RetryPolicy,
    TinkerCallError,
    is_transient,
)
from agl_tinker.loop.rollout import (
    DEADLINE_METADATA_KEY,
    BatchResult,
    DispatchConfig,
    RolloutsLost,
    StoreCallError,
    dispatch_batch,
)
from agl_tinker.store_server import release_rollouts

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

LLM_RESOURCE = "main_llm"
"""Resource name runners look up (Agent-lightning's ``@rollout`` agents take the first LLM)."""

STALL_GRACE_S = 5.0
"""Added to ``rollout_timeout_s * max_attempts`` for the stall deadline: the store's timeout
watchdog runs on a tick (about a second) and a timed-out attempt may be requeued."""


class TrainingAborted(RuntimeError):
    """The run stopped on purpose, for the reason in the message (the CLI exits 1)."""


class NoTrainableRollouts(TrainingAborted):
    """``max_empty_steps`` steps in a row had no rollout to train on."""


class StepStalled(TrainingAborted):
    """Streaming/async training: no group finished for far longer than any rollout may take."""


class StoreLost(TrainingAborted):
    """The LightningStore stopped answering, or restarted and forgot this run's rollouts."""


RUN_ERRORS: tuple[type[Exception], ...] = (TrainingAborted, ResumeError, TinkerCallError)
"""Errors that end a run with a message meant for the user (no traceback needed)."""


@dataclass
class TrainResult:
    """What a run did: per-step metrics, evaluations, where its artefacts are."""

    log_path: Path
    start_step: int
    end_step: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    final_state_path: str | None = None
    final_sampler_path: str | None = None
    curve_path: Path | None = None
    seconds: float = 0.0
    policy_checkpoints: dict[str, dict[str, str]] = field(default_factory=dict)
    """Several policies: policy name -> its final checkpoint's ``state_path``/``sampler_path``."""
    policy_curves: dict[str, Path] = field(default_factory=dict)
    """Several policies: policy name -> its reward curve (``log_path/policies/<name>/``)."""

    @property
    def rewards(self) -> list[float]:
        return [s["reward/mean"] for s in self.steps if s.get("reward/mean") is not None]

    @property
    def metrics_path(self) -> Path:
        return self.log_path / "metrics.jsonl"

    @property
    def checkpoints_path(self) -> Path:
        return self.log_path / "checkpoints.jsonl"


def _rollout_status(rollout: Any) -> str:
    """The rollout's status as the core judges it (:func:`agl_tinker.core.rewards.final_status`)."""
    attempt = getattr(rollout, "attempt", None)
    return final_status(
        str(rollout.status),
        attempt_status=attempt.status if attempt is not None else None,
        cut_by_deadline=bool((rollout.metadata or {}).get(DEADLINE_METADATA_KEY)),
    )


def _batch_metrics(
    batch: BatchResult[RolloutTrajectory], current_version: int, prefix: str = ""
) -> tuple[list[list[RolloutTrajectory]], dict[str, Any]]:
    """Per-group trajectories plus the step's rollout counters (fractions, drift, off-policy)."""
    outcomes = batch.outcomes
    n = max(1, len(outcomes))
    statuses = Counter(o.final_status for o in outcomes)
    exclusions = exclusion_counts(o.result for o in outcomes)
    drift = sequences = trajectories = off_policy = calls = 0
    returns: list[float] = []
    for o in outcomes:
        rt = o.result
        drift += len(rt.alignment.drift)
        calls += len(rt.reconstruction.calls)
        off_policy += sum(
            1
            for c in rt.reconstruction.calls
            if c.weights_version is not None and str(c.weights_version) != str(current_version)
        )
        if rt.trajectory is not None:
            trajectories += 1
            sequences += len(rt.alignment.sequences)
            returns.append(rt.attribution.episode_return)
    metrics: dict[str, Any] = {
        f"{prefix}rollouts/total": len(outcomes),
        f"{prefix}rollouts/succeeded_frac": statuses.get("succeeded", 0) / n,
        f"{prefix}rollouts/failed_frac": (n - statuses.get("succeeded", 0)) / n if outcomes else 0.0,
        f"{prefix}rollouts/no_reward_frac": exclusions.get("no_reward", 0) / n,
        f"{prefix}rollouts/excluded_frac": sum(exclusions.values()) / n,
        f"{prefix}reward/mean": sum(returns) / len(returns) if returns else None,
        # share of scored rollouts with a positive return: a win or success rate for 0-on-failure rewards
        f"{prefix}reward/positive_frac": sum(r > 0 for r in returns) / len(returns) if returns else None,
        f"{prefix}align/drift_events": drift,
        f"{prefix}align/sequences_per_trajectory": sequences / trajectories if trajectories else 0.0,
        f"{prefix}calls/total": calls,
        f"{prefix}calls/off_policy": off_policy,
    }
    metrics.update({f"{prefix}excluded/{k}": v for k, v in sorted(exclusions.items())})
    metrics.update(problem_metrics([o.result for o in outcomes], prefix))
    metrics.update(tool_health_metrics((o.result.reconstruction for o in outcomes), prefix))
    groups = [[o.result for o in g.outcomes] for g in batch.groups]
    return groups, metrics


def resume_message(name: str, state_path: str | None, start_step: int, n_steps: int) -> str:
    """The line a resumed run prints before anything else happens."""
    if start_step >= n_steps:
        return f"resuming: checkpoint {name} ({state_path}) already covers all {n_steps} steps"
    return f"resuming from checkpoint {name} ({state_path}): {start_step} steps done, continuing at step {start_step}"


def _with_epochs_for(train_ds: TaskDataset, max_steps: int | None) -> TaskDataset:
    """``train_ds`` with enough epochs for ``max_steps`` steps: a longer run cycles the data again.

    Batch ``i`` does not depend on ``n_epochs`` (each epoch is its own seeded shuffle), so adding
    epochs never changes the batches a shorter run or a resumed one trains on.
    """
    if max_steps is None or max_steps <= len(train_ds):
        return train_ds
    return dataclasses.replace(train_ds, n_epochs=math.ceil(max_steps / train_ds.batches_per_epoch))


class _Loop:
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
        self.progress = ProgressDisplay(enabled=show_progress)
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
        sampling_client = await self.training_client.save_weights_and_get_sampling_client()
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
        if self.endpoint is not None:
            await self.endpoint.stop()

    # -- rollouts -----------------------------------------------------------------------------

    def _process(self, rollout: Any, spans: Sequence[Any]) -> RolloutTrajectory:
        return rollout_trajectory(
            spans,
            status=_rollout_status(rollout),
            decode=self.tokenizer.decode,
            reconstruct_options=self.reconstruct_options,
            align_options=self.align_options,
            reward_options=self.reward_options,
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
            raise StoreLost(self._lost_message(step, exc)) from exc
        if known is None:
            raise StoreLost(self._lost_message(step, "it no longer knows this run's resources (restarted?)"))

    def _lost_message(self, step: int, why: object) -> str:
        return (
            f"lost the LightningStore during step {step}: {why}. Nothing of step {step} was trained; "
            "once the store is back, start the run again with the same log_path to resume from its "
            "last checkpoint"
        )

    async def run_batch(
        self, tasks: Sequence[Mapping[str, Any]], group_size: int, mode: str, label: str, step: int
    ) -> BatchResult[RolloutTrajectory]:
        return await self.dispatch(tasks, group_size, mode, label, step, self._process)

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
            raise StoreLost(self._lost_message(step, exc)) from exc
        finally:
            self.progress.end()
        await self._release(batch)
        return batch

    async def _release(self, batch: BatchResult[Any]) -> None:
        """Let the store forget the batch's finished rollouts and spans: their results are taken.

        Without it the store (in this process in one-click mode) grows by a batch of rollouts and
        spans every step. Cancelled rollouts stay: a runner may still be writing to them. A store
        that cannot release, or fails to, is left as it is (logged, the run goes on).
        """
        finished = [o.rollout_id for o in batch.outcomes if o.status in ("succeeded", "failed")]
        try:
            await release_rollouts(self.store, finished)
        except Exception as e:  # the results are safe; only the store's memory is at stake
            logger.warning("could not release %d finished rollouts from the store: %s", len(finished), e)

    # -- one step ------------------------------------------------------------------------------

    async def evaluate(self, step: int) -> dict[str, Any]:
        assert self.val_ds is not None
        t0 = time.perf_counter()
        tasks = self.val_ds.get_batch(0)
        await self.check_store(step)
        batch = await self.run_batch(tasks, 1, "val", f"eval @ step {step}", step)
        _, metrics = _batch_metrics(batch, step, prefix="eval/")
        metrics["eval/time_s"] = time.perf_counter() - t0
        return metrics

    async def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.config
        assert self.endpoint is not None
        t0 = time.perf_counter()
        tasks = self.train_ds.get_batch(step)
        await self.check_store(step)
        batch = await self.run_batch(tasks, cfg.group_size, "train", step_label(step, self.n_steps), step)
        t_sampled = time.perf_counter()
        rollout_groups, metrics = _batch_metrics(batch, step)
        metrics["rollouts/timeout"] = sum(1 for o in batch.outcomes if o.final_status == "timeout")
        metrics["rollouts/skipped"] = batch.stats.n_skipped
        made = await group_datums(rollout_groups, cfg, kl_reference=self.kl_reference)
        self._check_trainable(step, batch, made.valid)
        if cfg.remove_constant_reward_groups:
            metrics["groups/constant_removed"] = made.constant_removed
        metrics["groups/dropped"] = made.dropped
        metrics["groups/trained"] = len(made.trained)
        metrics.update(made.kl_metrics)
        n_datums = len(made.data)
        if made.data:
            optim_metrics: dict[str, Any] = {}
            await train_step(
                made.data,
                self.training_client,
                cfg.learning_rate,
                cfg.num_substeps,
                cfg.loss_fn,
                cfg.loss_fn_config,
                metrics=optim_metrics,
            )
            metrics.update({f"optim/{k}": v for k, v in optim_metrics.items()})
        metrics["train/datums"] = n_datums
        t_trained = time.perf_counter()
        sampling_client = await self.training_client.save_weights_and_get_sampling_client()
        self.endpoint.swap(sampling_client, version=step + 1)
        metrics.update(self.retrier.take_metrics())
        stats = batch.stats
        metrics.update(
            {
                "progress/step": step,
                "progress/epoch": self.train_ds.epoch_of(step),
                "optim/lr": cfg.learning_rate,
                "time/sampling_s": t_sampled - t0,
                "time/waiting_s": stats.wait_s,
                "time/processing_s": stats.process_s,
                "time/training_s": t_trained - t_sampled,
                "time/swap_s": time.perf_counter() - t_trained,
                "dispatch/overhead_ms_p50": stats.overhead_ms(0.5),
                "dispatch/detect_ms_p50": stats.detect_ms(0.5),
            }
        )
        metrics.update(self.endpoint.span_metrics())  # spans the recorder could not store
        return metrics

    def _check_trainable(
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
        self, name: str, next_step: int, final: bool = False, extra: Mapping[str, Any] | None = None
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
        if candidates or _has_metrics(log_path):
            raise no_usable_checkpoint(log_path, candidates)
        await self.create_training_client(None)
        return None


async def train(
    config: TrainConfig,
    store: LightningStore,
    train_tasks: Any,
    val_tasks: Any = None,
    *,
    required_fields: Sequence[str] = (),
    service: Any = None,
    show_progress: bool = True,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> TrainResult:
    """Train the policy behind the endpoint on rollouts run by whatever runners serve ``store``.

    ``train_tasks``/``val_tasks``: lists of task dicts or CSV/JSONL/Parquet paths. Runners (in
    this process, other processes or other machines) must be dequeuing from ``store``; they get
    the endpoint as the ``main_llm`` resource. ``service`` defaults to ``backend.service_client()``.
    """
    config.validate()
    started = time.perf_counter()
    train_ds, val_ds = build_datasets(
        train_tasks,
        batch_size=config.batch_size,
        group_size=config.group_size,
        n_epochs=config.n_epochs,
        seed=config.seed,
        required_fields=required_fields,
        val=val_tasks,
        val_fraction=config.val_fraction if val_tasks is None else 0.0,
    )
    train_ds = _with_epochs_for(train_ds, config.max_steps)
    n_steps = len(train_ds) if config.max_steps is None else config.max_steps
    log_path = Path(config.log_path)
    log_path.mkdir(parents=True, exist_ok=True)
    owns_service = service is None  # a service the run creates is closed by the run (ends a live session)
    loop_type = _Loop
    if config.policies:
        from agl_tinker.loop.policies import MultiPolicyLoop  # it builds on this module

        loop_type = MultiPolicyLoop
    loop = loop_type(
        config, store, train_ds, val_ds, service or backend.service_client(), show_progress, n_steps
    )
    resume = await loop.resume()
    start_step = int(resume.batch) if resume is not None and resume.batch is not None else 0
    result = TrainResult(log_path=log_path, start_step=start_step, end_step=max(start_step, n_steps))
    if resume is not None and start_step < n_steps:
        truncate_metrics(log_path, start_step)  # the steps from start_step on are redone
    ml_logger = ml_log.setup_logging(
        log_dir=str(log_path),
        wandb_project=config.wandb_project,
        wandb_name=config.wandb_name,
        config=config,
        do_configure_logging_module=False,
    )
    if resume is not None:
        loop.progress.note(resume_message(resume.name, resume.state_path, start_step, n_steps))
    try:
        await loop.start(start_step)
        sync_from = start_step
        if config.async_config is not None or config.stream_minibatch_config is not None:
            from agl_tinker.loop.async_loop import run_overlapped  # it builds on this module

            sync_from = await run_overlapped(loop, ml_logger, result, n_steps, resume, on_step)
        for step in range(sync_from, n_steps):
            metrics: dict[str, Any] = {}
            if val_ds is not None and config.eval_every and step % config.eval_every == 0:
                evaluation = await loop.evaluate(step)
                result.evals.append({"step": step, **evaluation})
                metrics.update(evaluation)
            metrics.update(await loop.train_step(step))
            # Metrics first: a kill between the two repeats this step on resume, never hides it.
            ml_logger.log_metrics(metrics, step=step)
            if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < n_steps:
                await loop.checkpoint(f"{step + 1:06d}", step + 1)
            result.steps.append({"step": step, **metrics})
            loop.progress.step_done(step, n_steps, metrics)
            if on_step is not None:
                on_step(step, metrics)
        if start_step < n_steps or resume is None:
            if val_ds is not None and config.eval_every:
                evaluation = await loop.evaluate(n_steps)
                result.evals.append({"step": n_steps, **evaluation})
                ml_logger.log_metrics(evaluation, step=n_steps)
            paths = await loop.checkpoint("final", n_steps, final=True)
            result.final_state_path = paths.get("state_path")
            result.final_sampler_path = paths.get("sampler_path")
        else:
            result.final_state_path = resume.state_path
            result.final_sampler_path = resume.sampler_path
    finally:
        await loop.stop()
        ml_logger.close()
        if owns_service:
            await backend.close_service(loop.service, failed=sys.exc_info()[0] is not None)
    result.curve_path = write_reward_curve(result.metrics_path, log_path / "reward_curve.png")
    result.policy_checkpoints = dict(loop.policy_checkpoints)
    for name, directory in loop.policy_dirs().items():
        curve = write_reward_curve(
            result.metrics_path, directory / "reward_curve.png", prefix=f"policy/{name}/"
        )
        if curve is not None:
            result.policy_curves[name] = curve
    result.seconds = time.perf_counter() - started
    return result


def _has_metrics(log_path: str | Path) -> bool:
    path = Path(log_path) / "metrics.jsonl"
    return path.exists() and path.stat().st_size > 0
