"""The RL loop: Agent-lightning rollouts in, tinker-cookbook train steps out, new weights hot-swapped.

One step: enqueue a batch of tasks x group_size into the store, wait for the runners (event-driven),
rebuild each rollout's trajectory from its spans (the pure core), turn groups into datums with the
cookbook's own advantage and assembly functions, ``forward_backward`` + ``optim_step`` through the
cookbook's ``train_step``, and swap the new sampling client into the running endpoint. Checkpoints
go through the cookbook's ``checkpoint_utils``; a restarted run resumes at the batch after the last
checkpoint, so no batch is trained twice or skipped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlightning.store.base import LightningStore
from agentlightning.types import RolloutConfig
from tinker_cookbook import checkpoint_utils, model_info
from tinker_cookbook.rl.data_processing import (
    assemble_training_data,
    compute_advantages,
    remove_constant_reward_groups,
)
from tinker_cookbook.rl.metrics import incorporate_kl_penalty
from tinker_cookbook.rl.train import train_step
from tinker_cookbook.rl.types import TrajectoryGroup
from tinker_cookbook.utils import ml_log

from agl_tinker import backend
from agl_tinker.align import RolloutTrajectory, rollout_trajectory, trajectory_group
from agl_tinker.config import TrainConfig
from agl_tinker.data import TaskDataset, build_datasets
from agl_tinker.endpoint import Endpoint, EndpointConfig, start_endpoint
from agl_tinker.progress import ProgressDisplay
from agl_tinker.reconstruct import ReconstructOptions
from agl_tinker.report import write_reward_curve
from agl_tinker.rollout import BatchResult, DispatchConfig, dispatch_batch
from agl_tinker.tool_health import tool_health_metrics

logger = logging.getLogger(__name__)

LLM_RESOURCE = "main_llm"
"""Resource name runners look up (Agent-lightning's ``@rollout`` agents take the first LLM)."""


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
    """The rollout's status, refined to ``timeout`` when its last attempt timed out."""
    status = str(rollout.status)
    attempt = getattr(rollout, "attempt", None)
    if status == "failed" and attempt is not None and attempt.status in ("timeout", "unresponsive"):
        return "timeout"
    return status


def _batch_metrics(
    batch: BatchResult[RolloutTrajectory], current_version: int, prefix: str = ""
) -> tuple[list[list[RolloutTrajectory]], dict[str, Any]]:
    """Per-group trajectories plus the step's rollout counters (fractions, drift, off-policy)."""
    outcomes = batch.outcomes
    n = max(1, len(outcomes))
    statuses = Counter(o.final_status for o in outcomes)
    exclusions: Counter[str] = Counter()
    drift = sequences = trajectories = off_policy = calls = 0
    returns: list[float] = []
    for o in outcomes:
        rt = o.result
        if rt.exclusion is not None:
            exclusions[str(rt.exclusion)] += 1
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
        f"{prefix}align/drift_events": drift,
        f"{prefix}align/sequences_per_trajectory": sequences / trajectories if trajectories else 0.0,
        f"{prefix}calls/total": calls,
        f"{prefix}calls/off_policy": off_policy,
    }
    metrics.update({f"{prefix}excluded/{k}": v for k, v in sorted(exclusions.items())})
    metrics.update(tool_health_metrics((o.result.reconstruction for o in outcomes), prefix))
    groups = [[o.result for o in g.outcomes] for g in batch.groups]
    return groups, metrics


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
    ) -> None:
        self.config = config
        self.store = store
        self.train_ds = train_ds
        self.val_ds = val_ds
        self.service = service
        self.tokenizer = backend.get_tokenizer(config.model_name)
        self.renderer_name = config.renderer_name or model_info.get_recommended_renderer_name(
            config.model_name
        )
        self.reward_options = config.reward_options()
        self.reconstruct_options = ReconstructOptions(
            agent_match=config.agent_match, model_match=config.model_match
        )
        self.progress = ProgressDisplay(enabled=show_progress)
        self.endpoint: Endpoint | None = None
        self.training_client: Any = None
        self.kl_reference: Any = None
        self.train_resources_id: str | None = None
        self.val_resources_id: str | None = None

    # -- setup ---------------------------------------------------------------------------------

    async def start(self, start_step: int, state_path: str | None) -> None:
        cfg = self.config
        if state_path is not None:
            self.training_client = await self.service.create_training_client_from_state_with_optimizer(
                state_path
            )
        else:
            self.training_client = await self.service.create_lora_training_client(
                cfg.model_name, rank=cfg.lora_rank, seed=cfg.seed
            )
        if cfg.kl_penalty_coef > 0:
            self.kl_reference = await self.service.create_sampling_client(base_model=cfg.model_name)
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
            reward_options=self.reward_options,
        )

    async def run_batch(
        self, tasks: Sequence[Mapping[str, Any]], group_size: int, mode: str, label: str
    ) -> BatchResult[RolloutTrajectory]:
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
            # The endpoint stores spans off the request path: store them before reading a rollout's.
            before_read=self.endpoint.flush if self.endpoint is not None else None,
        )
        self.progress.begin(label, len(tasks) * group_size)
        try:
            batch = await dispatch_batch(
                self.store,
                tasks,
                group_size,
                self._process,
                config=dispatch,
                on_progress=self.progress.update,
            )
        finally:
            self.progress.end()
        return batch

    # -- one step ------------------------------------------------------------------------------

    async def evaluate(self, step: int) -> dict[str, Any]:
        assert self.val_ds is not None
        t0 = time.perf_counter()
        tasks = self.val_ds.get_batch(0)
        batch = await self.run_batch(tasks, 1, "val", f"eval @ step {step}")
        _, metrics = _batch_metrics(batch, step, prefix="eval/")
        metrics["eval/time_s"] = time.perf_counter() - t0
        return metrics

    async def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.config
        assert self.endpoint is not None
        t0 = time.perf_counter()
        tasks = self.train_ds.get_batch(step)
        batch = await self.run_batch(tasks, cfg.group_size, "train", f"step {step + 1}/{len(self.train_ds)}")
        t_sampled = time.perf_counter()
        rollout_groups, metrics = _batch_metrics(batch, step)
        groups: list[TrajectoryGroup] = []
        dropped = 0
        for rollouts in rollout_groups:
            group, _report = trajectory_group(rollouts, min_valid=cfg.min_valid_per_group)
            if group is None:
                dropped += 1
            else:
                groups.append(group)
        if cfg.remove_constant_reward_groups:
            before = len(groups)
            groups = remove_constant_reward_groups(groups)
            metrics["groups/constant_removed"] = before - len(groups)
        metrics["groups/dropped"] = dropped
        metrics["groups/trained"] = len(groups)
        n_datums = 0
        if groups:
            advantages = compute_advantages(groups)
            data, _meta = assemble_training_data(groups, advantages)
            if cfg.kl_penalty_coef > 0 and self.kl_reference is not None:
                metrics.update(
                    await incorporate_kl_penalty(
                        data, self.kl_reference, cfg.kl_penalty_coef, cfg.kl_discount_factor
                    )
                )
            n_datums = len(data)
            if data:
                optim_metrics: dict[str, Any] = {}
                await train_step(
                    data,
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
        return metrics

    async def checkpoint(self, name: str, next_step: int, final: bool = False) -> dict[str, str]:
        loop_state: dict[str, Any] = {"batch": next_step}
        if final:
            loop_state["final"] = True
        return await checkpoint_utils.save_checkpoint_async(
            self.training_client, name, self.config.log_path, loop_state, kind="both"
        )


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
    n_steps = len(train_ds) if config.max_steps is None else min(config.max_steps, len(train_ds))
    log_path = Path(config.log_path)
    log_path.mkdir(parents=True, exist_ok=True)
    resume = checkpoint_utils.get_last_checkpoint(str(log_path))
    start_step = int(resume.batch) if resume is not None and resume.batch is not None else 0
    result = TrainResult(log_path=log_path, start_step=start_step, end_step=max(start_step, n_steps))
    ml_logger = ml_log.setup_logging(
        log_dir=str(log_path),
        wandb_project=config.wandb_project,
        wandb_name=config.wandb_name,
        config=config,
        do_configure_logging_module=False,
    )
    if resume is not None:
        logger.info("resuming from %s at step %d", resume.state_path, start_step)
    loop = _Loop(config, store, train_ds, val_ds, service or backend.service_client(), show_progress)
    try:
        await loop.start(start_step, resume.state_path if resume is not None else None)
        for step in range(start_step, n_steps):
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
    result.curve_path = write_reward_curve(result.metrics_path, log_path / "reward_curve.png")
    result.seconds = time.perf_counter() - started
    return result
