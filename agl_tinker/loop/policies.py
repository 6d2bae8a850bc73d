"""Several agents, several LoRAs, one run: the training loop of ``TrainConfig.policies``.

Each policy (:class:`~agl_tinker.loop.config.PolicyConfig`) has its own Tinker training client
(``ServiceClient.create_lora_training_client``), its own sampling client served under its
``models`` names by one endpoint, and its own groups, advantages, datums, optimiser steps,
weights version, checkpoints (``log_path/policies/<name>/checkpoints.jsonl``) and metrics
(``policy/<name>/...``), and with ``kl_penalty_coef`` its own KL reference (its base model). The rollouts are shared: every rollout of a batch is read once per
policy, keeping only that policy's calls (the core's ``model_match``/``agent_match``), so a call
is trained only on the policy that sampled it. A call no policy owns is counted
(``calls/unowned``) and trained on none. Rewards are the episode reward for every policy, or,
with ``reward_key``, one reward dimension per policy.

Top-level ``reward/mean`` is the mean of the policies' means (what the run summary shows);
``train/datums`` their sum. Synchronous steps only (``TrainConfig`` refuses ``async_config`` and
``stream_minibatch_config`` together with policies).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from agentlightning.store.base import LightningStore
from tinker_cookbook import checkpoint_utils, model_info
from tinker_cookbook.checkpoint_utils import CheckpointRecord

from agl_tinker import backend
from agl_tinker.core.reconstruct import ReconstructOptions
from agl_tinker.core.rewards import RewardOptions
from agl_tinker.core.trajectory import RolloutTrajectory, rollout_trajectory
from agl_tinker.dispatch.batch import BatchResult, GroupResult, RolloutOutcome
from agl_tinker.endpoint.start import EndpointConfig, PolicyServing, start_policy_endpoint
from agl_tinker.loop.batch_metrics import batch_metrics, rollout_status, served_calls
from agl_tinker.loop.checkpoints import (
    AtomicCheckpointIndex,
    no_usable_checkpoint,
    policy_dir,
    resume_candidates,
    set_aside,
)
from agl_tinker.loop.config import PROVENANCE_LOSSES, ResolvedPolicy, TrainConfig
from agl_tinker.loop.data import TaskDataset
from agl_tinker.loop.progress import step_label
from agl_tinker.loop.step_metrics import StepTimes, step_row, sum_policy_metrics
from agl_tinker.loop.step_trainer import BusyClock, Learner, StepTrainer
from agl_tinker.loop.training_run import TrainingRun, has_metrics
from agl_tinker.run.flat_reward import group_reward_metrics
from agl_tinker.tinker_retry import (
    RetryingSamplingClient,
    RetryingTrainingClient,
    TinkerCallError,
    is_transient,
)

logger = logging.getLogger(__name__)

_SUMMED = ("train/datums", "groups/trained", "groups/dropped", "groups/constant_removed")
"""Top-level keys of a several-policy step: the sum of the policies' own."""

PolicyResults = dict[str, RolloutTrajectory]
"""One rollout read once per policy: policy name -> its calls' trajectory."""


@dataclass
class PolicyRun:
    """One policy's state in a run."""

    settings: ResolvedPolicy
    tokenizer: Any
    renderer_name: str
    reconstruct_options: ReconstructOptions
    reward_options: RewardOptions
    log_dir: Path
    training_client: Any = None
    kl_reference: Any = None
    """The KL penalty's reference: this policy's base model, sampled (``kl_penalty_coef`` > 0)."""

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def prefix(self) -> str:
        return f"policy/{self.name}/"


def policy_view(batch: BatchResult[PolicyResults], name: str) -> BatchResult[RolloutTrajectory]:
    """The batch as policy ``name`` sees it: each rollout's result is that policy's trajectory."""
    groups = tuple(
        GroupResult(g.group_index, g.task, tuple(_outcome_of(o, name) for o in g.outcomes))
        for g in batch.groups
    )
    return BatchResult(groups, batch.stats)


def _outcome_of(outcome: RolloutOutcome[PolicyResults], name: str) -> RolloutOutcome[RolloutTrajectory]:
    values: dict[str, Any] = {f.name: getattr(outcome, f.name) for f in fields(outcome)}
    values["result"] = outcome.result[name]
    return RolloutOutcome(**values)


def unowned_calls(results: Mapping[str, RolloutTrajectory]) -> int:
    """Calls of one rollout that no policy kept (each policy's reading sees every call once)."""
    if not results:
        return 0
    any_view = next(iter(results.values())).reconstruction.metrics
    total = any_view.get("calls", 0) + any_view.get("filtered_calls", 0)
    return max(0, total - sum(r.reconstruction.metrics.get("calls", 0) for r in results.values()))


class MultiPolicyLoop(TrainingRun):
    """:class:`~agl_tinker.loop.training_run.TrainingRun` for ``TrainConfig.policies``: one step trains every policy."""

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
        super().__init__(
            config, store, train_ds, val_ds, service, show_progress, n_steps, runner_stats=runner_stats
        )
        self.runs: dict[str, PolicyRun] = {}
        base_options = config.reward_options()
        for name in config.policies:
            settings = config.policy_settings(name)
            tokenizer = (
                self.tokenizer
                if settings.model_name == config.model_name
                else backend.get_tokenizer(settings.model_name)
            )
            self.runs[name] = PolicyRun(
                settings=settings,
                tokenizer=tokenizer,
                renderer_name=settings.renderer_name
                or model_info.get_recommended_renderer_name(settings.model_name),
                reconstruct_options=replace(
                    self.reconstruct_options,
                    vocab_size=len(tokenizer),
                    agent_match=settings.agent_match,
                    model_match=settings.model_match,
                ),
                reward_options=replace(base_options, dimension=settings.reward_key),
                log_dir=policy_dir(config.log_path, name),
            )

    def policy_dirs(self) -> dict[str, Path]:
        return {name: run.log_dir for name, run in self.runs.items()}

    # -- setup ---------------------------------------------------------------------------------

    async def _create_client(self, run: PolicyRun, state_path: str | None) -> None:
        """``run``'s LoRA training client: fresh, or loaded from ``state_path`` (weights + optimiser)."""
        settings = run.settings
        if state_path is not None:
            client = await self.retrier.call(
                "create_training_client",
                lambda: self.service.create_training_client_from_state_with_optimizer(state_path),
            )
        else:
            client = await self.retrier.call(
                "create_training_client",
                lambda: self.service.create_lora_training_client(
                    settings.model_name, rank=settings.lora_rank, seed=self.config.seed
                ),
            )
        run.training_client = RetryingTrainingClient(client, self.retrier)

    async def _create_kl_reference(self, run: PolicyRun) -> None:
        """``run``'s KL reference: a sampling client of its own base model."""
        model = run.settings.model_name
        reference = await self.retrier.call(
            "create_sampling_client", lambda: self.service.create_sampling_client(base_model=model)
        )
        run.kl_reference = RetryingSamplingClient(reference, self.retrier)

    async def resume(self) -> CheckpointRecord | None:
        """Every policy from its checkpoint of the newest step all of them saved; the first's record.

        Policies are checkpointed together, so each step saved has one record per policy. A step
        some policy cannot load (other than a Tinker outage) is reported and the previous one
        tried. As in the single-policy loop, a directory with metrics but no usable checkpoint is
        refused unless ``fresh_start``.
        """
        log_path = self.config.log_path
        runs = list(self.runs.values())
        if self.config.fresh_start:
            for directory in (Path(log_path), *(run.log_dir for run in runs)):
                for moved in set_aside(directory):
                    logger.warning("fresh_start: kept the earlier run's file as %s", moved)
            for run in runs:
                await self._create_client(run, None)
            return None
        candidates = {run.name: resume_candidates(run.log_dir) for run in runs}
        first = candidates[runs[0].name]
        for record in first:
            chosen = {run.name: _at_batch(candidates[run.name], record.batch) for run in runs}
            if any(r is None for r in chosen.values()):
                continue
            try:
                for run in runs:
                    found = chosen[run.name]
                    assert found is not None
                    await self._create_client(run, found.state_path)
            except TinkerCallError as exc:
                if is_transient(exc.error):
                    raise
                logger.error(
                    "checkpoint batch %s cannot be loaded, trying the previous one: %s", record.batch, exc
                )
                continue
            self.policy_checkpoints = {name: _paths(r) for name, r in chosen.items() if r is not None}
            return record
        if any(candidates.values()) or has_metrics(log_path):
            raise no_usable_checkpoint(runs[0].log_dir, first)
        for run in runs:
            await self._create_client(run, None)
        return None

    async def start(self, start_step: int) -> None:
        """Serve every policy's current weights from one endpoint and register the resources."""
        cfg = self.config
        if cfg.kl_penalty_coef > 0:
            for run in self.runs.values():
                await self._create_kl_reference(run)
        served: dict[str, PolicyServing] = {}
        for learner, run in zip(self.learners(), self.runs.values(), strict=True):
            sampling_client = await learner.sampling_client()
            served[run.name] = PolicyServing(
                sampling_client=sampling_client,
                base_model=run.settings.model_name,
                tokenizer=run.tokenizer,
                models=run.settings.models,
                renderer_name=run.renderer_name,
                weights_version=start_step,
                records_stability_info=learner.records_stability_info,
            )
        self.endpoint = await start_policy_endpoint(
            EndpointConfig(
                host=cfg.endpoint_host,
                port=cfg.endpoint_port,
                public_host=cfg.endpoint_public_host,
                token_in_token_out=cfg.token_in_token_out,
                max_context_tokens=cfg.max_context_tokens,
                default_max_tokens=cfg.max_tokens,
            ),
            store=self.store,
            policies=served,
        )
        self.train_resources_id = await self._add_llm_resource(cfg.temperature)
        self.val_resources_id = await self._add_llm_resource(cfg.eval_temperature)

    # -- rollouts ------------------------------------------------------------------------------

    def _process_policies(self, rollout: Any, spans: Sequence[Any]) -> PolicyResults:
        spans = list(spans)
        status = rollout_status(rollout)
        served = served_calls(rollout)
        return {
            name: rollout_trajectory(
                spans,
                status=status,
                decode=run.tokenizer.decode,
                reconstruct_options=run.reconstruct_options,
                align_options=self.align_options,
                reward_options=run.reward_options,
                served_calls=served,
            )
            for name, run in self.runs.items()
        }

    def _shared_metrics(self, batch: BatchResult[PolicyResults], step: int, prefix: str) -> dict[str, Any]:
        """Rollout-level counters (the same for every policy) and the mean of the policies' rewards."""
        metrics: dict[str, Any] = {}
        means: list[float] = []
        for name in self.runs:
            _, policy_metrics = batch_metrics(
                policy_view(batch, name), step, prefix=f"{prefix}policy/{name}/"
            )
            metrics.update(policy_metrics)
            mean = policy_metrics.get(f"{prefix}policy/{name}/reward/mean")
            if mean is not None:
                means.append(mean)
        first = next(iter(self.runs))
        _, first_metrics = batch_metrics(policy_view(batch, first), step, prefix=prefix)
        metrics.update({k: v for k, v in first_metrics.items() if k.startswith(f"{prefix}rollouts/")})
        metrics[f"{prefix}reward/mean"] = sum(means) / len(means) if means else None
        metrics[f"{prefix}calls/unowned"] = sum(unowned_calls(o.result) for o in batch.outcomes)
        return metrics

    async def evaluate(self, step: int) -> dict[str, Any]:
        assert self.val_ds is not None
        t0 = time.perf_counter()
        await self.check_store(step)
        batch = await self.dispatch(
            self.val_ds.get_batch(0), 1, "val", f"eval @ step {step}", step, self._process_policies
        )
        metrics = self._shared_metrics(batch, step, "eval/")
        metrics["eval/time_s"] = time.perf_counter() - t0
        return metrics

    def learners(self) -> list[Learner]:
        """Every policy's training side, in the order of ``TrainConfig.policies``."""
        return [
            Learner(
                name,
                run.training_client,
                run.settings.learning_rate,
                run.settings.num_substeps,
                run.kl_reference,
                records_stability_info=self.config.loss_fn in PROVENANCE_LOSSES,
                sampling_client_kind=self.config.sampling_client_kind,
            )
            for name, run in self.runs.items()
        ]

    async def train_step(self, step: int) -> dict[str, Any]:
        """One synchronous step: one batch, read once per policy; each policy trains on its view."""
        cfg = self.config
        assert self.endpoint is not None
        t0 = time.perf_counter()
        await self.check_store(step)
        batch = await self.dispatch(
            self.train_ds.get_batch(step),
            cfg.group_size,
            "train",
            step_label(step, self.n_steps),
            step,
            self._process_policies,
        )
        t_sampled = time.perf_counter()
        metrics = self._shared_metrics(batch, step, "")
        clock = BusyClock()
        trainers = [
            StepTrainer(learner, cfg, clock, cfg.batch_size, stream=None) for learner in self.learners()
        ]
        for trainer in trainers:
            assert trainer.learner.name is not None
            for group in policy_view(batch, trainer.learner.name).groups:
                await trainer.add(group.group_index, group.results)
            await trainer.finish()
            metrics.update(trainer.metrics())
            written = self.transcripts.write(
                step, policy_view(batch, trainer.learner.name).groups, policy=trainer.learner.name
            )
            metrics.update({f"{trainer.learner.prefix}{k}": v for k, v in written.items()})
        first = policy_view(batch, next(iter(self.runs)))
        self.check_trainable(step, first, [g for t in trainers for g in t.valid])
        metrics.update(group_reward_metrics([g for t in trainers for g in t.valid]))
        metrics.update(sum_policy_metrics([t.metrics() for t in trainers], _SUMMED, prefixes=self.runs))
        t_trained = time.perf_counter()
        for learner in self.learners():
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
                first,
                step,
                epoch=self.train_ds.epoch_of(step),
                times=times,
                runner_restarts=self.take_runner_restarts(),
            )
        )
        metrics.update(self.endpoint.span_metrics())
        return metrics

    async def checkpoint(
        self, name: str, next_step: int, *, final: bool = False, extra: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """Checkpoint every policy into its own directory; the first policy's paths."""
        loop_state: dict[str, Any] = {**(extra or {}), "batch": next_step}
        if final:
            loop_state["final"] = True
        for run in self.runs.values():
            run.log_dir.mkdir(parents=True, exist_ok=True)
            self.policy_checkpoints[run.name] = await checkpoint_utils.save_checkpoint_async(
                run.training_client,
                name,
                str(run.log_dir),
                {**loop_state, "policy": run.name},
                kind="both",
                store=AtomicCheckpointIndex(run.log_dir),
            )
        return self.policy_checkpoints[next(iter(self.runs))]


def _at_batch(records: Sequence[CheckpointRecord], batch: int | None) -> CheckpointRecord | None:
    """The newest of ``records`` (newest first) saved at ``batch``."""
    return next((r for r in records if r.batch == batch), None)


def _paths(record: CheckpointRecord) -> dict[str, str]:
    """A checkpoint record's paths, as ``save_checkpoint_async`` returns them."""
    paths = {"state_path": record.state_path, "sampler_path": record.sampler_path}
    return {k: v for k, v in paths.items() if v is not None}
