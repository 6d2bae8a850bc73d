"""The RL loop: Agent-lightning rollouts in, tinker-cookbook train steps out, new weights hot-swapped.

:func:`train` sets a run up (datasets, the run's policies and their clients, resume, logging) and
:func:`run_steps` is the one outer loop of every mode: per step it evaluates when due, lets the
schedule (:func:`~agl_tinker.loop.schedules.pick_schedule`: synchronous batches, streamed
minibatches or overlapped async steps) hand the step its groups, trains every policy on them
(:class:`~agl_tinker.loop.step.TrainingStep`: datums, the cookbook's ``train_step`` or its
streaming form), publishes the new weights into the running endpoint, logs one metrics row,
checkpoints when due (with what the schedule must carry), and reports progress and ``on_step``.
Checkpoints go through the cookbook's ``checkpoint_utils``; a restarted run resumes at the batch
after the last checkpoint, so no batch is trained twice or skipped.

Faults (``tests/reliability/README.md`` lists each, with what it costs):

* every Tinker call (client creation, sampling, ``forward_backward``, ``optim_step``, saves) is
  retried on transient errors with the SDK's own rules, bounded (:mod:`agl_tinker.tinker_retry`), and
  counted per call kind in ``tinker/retries/<kind>``; a non-retryable error stops the run naming
  the call (:class:`~agl_tinker.tinker_retry.TinkerCallError`);
* a step always ends: without ``batch_timeout_s``, it ends once no rollout has finished for
  ``rollout_timeout_s * max_attempts + STALL_GRACE_S`` (rollouts still out count as ``timeout``);
* a step that trains nothing is logged as an error with its dominant exclusion reason;
  ``max_empty_steps`` of them in a row stop the run (:class:`~agl_tinker.loop.errors.NoTrainableRollouts`);
* a store that stops answering, or restarts and forgets the run's rollouts, stops the run within
  seconds (:class:`~agl_tinker.loop.errors.StoreLost`): a fresh store knows neither the rollouts in flight nor the
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentlightning.store.base import LightningStore
from tinker_cookbook.checkpoint_utils import CheckpointRecord
from tinker_cookbook.utils import ml_log

from agl_tinker import backend
from agl_tinker.loop.checkpoints import truncate_metrics
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.data import TaskDataset, build_datasets
from agl_tinker.loop.metric_tables import setup_metrics_logging
from agl_tinker.loop.report import write_reward_curve
from agl_tinker.loop.result import TrainResult
from agl_tinker.loop.schedules import Schedule, pick_schedule
from agl_tinker.loop.step import TrainingStep
from agl_tinker.loop.step_metrics import StepTimes
from agl_tinker.loop.step_trainer import BusyClock
from agl_tinker.loop.training_run import TrainingRun
from agl_tinker.run.announce import announce_run, with_first_metrics
from agl_tinker.run.claim import claim_run, release_run
from agl_tinker.run.identity import record_run

__all__ = ["TrainResult", "claimed", "resume_message", "run_steps", "train"]

logger = logging.getLogger(__name__)

OnStep = Callable[[int, Mapping[str, Any]], None]
"""Called after each step with its index and metrics row."""


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


@contextmanager
def claimed(config: TrainConfig) -> Iterator[None]:
    """Hold the lock of ``config.log_path`` (:mod:`agl_tinker.run.lock`) for the block."""
    claim_run(config)
    try:
        yield
    finally:
        release_run(config)


async def train(
    config: TrainConfig,
    store: LightningStore,
    train_tasks: Any,
    val_tasks: Any = None,
    *,
    required_fields: Sequence[str] = (),
    service: Any = None,
    show_progress: bool = True,
    on_step: OnStep | None = None,
    runner_stats: Mapping[str, int] | None = None,
) -> TrainResult:
    """Train the policies behind the endpoint on rollouts run by whatever runners serve ``store``.

    ``train_tasks``/``val_tasks``: lists of task dicts or CSV/JSONL/Parquet paths. Runners (in
    this process, other processes or other machines) must be dequeuing from ``store``; they get
    the endpoint as the ``main_llm`` resource. ``service`` defaults to ``backend.service_client()``.
    The run holds the lock of ``config.log_path`` until it returns or raises
    (:mod:`agl_tinker.run.lock`; another run there fails at once) and logs to ``run.log`` there.
    ``runner_stats``: the live runner-fault counts of the strategy running the runners (keys in
    :mod:`agl_tinker.runners.supervise`), read at each step: its ``runners/restarts`` metric is
    the restarts during that step (0 when not given, e.g. runners started by hand elsewhere).
    """
    with claimed(config):
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
        override_metrics = record_run(config, train_ds.tasks)
        owns_service = service is None  # a service the run creates is closed by the run (ends a live session)
        run = TrainingRun(
            config,
            store,
            train_ds,
            val_ds,
            service or backend.service_client(),
            show_progress,
            n_steps,
            runner_stats=runner_stats,
        )
        resume = await run.resume()
        start_step = int(resume.batch) if resume is not None and resume.batch is not None else 0
        result = TrainResult(log_path=log_path, start_step=start_step, end_step=max(start_step, n_steps))
        if resume is not None and start_step < n_steps:
            truncate_metrics(log_path, start_step)  # the steps from start_step on are redone
        ml_logger = setup_metrics_logging(str(log_path), config.wandb_project, config.wandb_name, config)
        ml_logger = with_first_metrics(ml_logger, override_metrics)
        run.progress.note(announce_run(config))  # the backend and where the outputs go, first
        if resume is not None:
            run.progress.note(resume_message(resume.name, resume.state_path, start_step, n_steps))
        try:
            await run.start(start_step)
            schedule = pick_schedule(run, resume, start_step)
            await run_steps(run, schedule, ml_logger, result, on_step)
            await _final(run, ml_logger, result, resume, schedule)
        finally:
            await run.stop()
            ml_logger.close()
            if owns_service:
                await backend.close_service(run.service, failed=sys.exc_info()[0] is not None)
        _write_curves(run, result)
        result.seconds = time.perf_counter() - started
        return result


async def run_steps(
    run: TrainingRun,
    schedule: Schedule,
    ml_logger: ml_log.Logger,
    result: TrainResult,
    on_step: OnStep | None = None,
) -> None:
    """The one outer loop: steps ``result.start_step .. run.n_steps`` of any schedule.

    Per step: evaluate when due; the schedule hands the step its groups (``None``: the stream has
    none left, the run ends early at that step, ``result.end_step``, its evaluation logged); every
    policy trains and publishes its new weights; one metrics row is logged (metrics first: a kill
    before the checkpoint repeats the step on resume, never hides it); a checkpoint every
    ``save_every`` steps carries the schedule's state; then progress and ``on_step``.
    """
    cfg = run.config
    clock = BusyClock()
    async with schedule.running():
        last_end = time.perf_counter()
        idle_before = schedule.sampler_idle_s()
        for step in range(result.start_step, run.n_steps):
            metrics: dict[str, Any] = {}
            if run.val_ds is not None and cfg.eval_every and step % cfg.eval_every == 0:
                evaluation = await run.evaluate(step)
                result.evals.append({"step": step, **evaluation})
                metrics.update(evaluation)
            training = TrainingStep(run, step, clock, schedule.stream)
            busy_before = clock.busy_s
            t_sampling = time.perf_counter()  # after the evaluation and the last step's checkpoint
            sampled = await schedule.fill(training)
            if sampled is None:
                logger.info("no groups left to train at step %d: the run ends early", step)
                result.end_step = step
                if metrics:  # this step's evaluation, of the run's last weights
                    ml_logger.log_metrics(metrics, step=step)
                break
            t_collected = time.perf_counter()
            await training.finish()
            training.check_trainable(sampled)  # empty steps: logged, and bounded
            t_trained = time.perf_counter()
            await training.publish(clock)
            t_end = time.perf_counter()
            schedule.after_step(training)
            times = StepTimes(
                step_s=t_end - last_end,
                sampling_s=t_collected - t_sampling,
                waiting_s=sampled.waiting_s,
                processing_s=sampled.processing_s,
                training_s=t_trained - t_collected,
                swap_s=t_end - t_trained,
                trainer_busy_s=clock.busy_s - busy_before,
                sampler_idle_s=schedule.sampler_idle_s() - idle_before,
            )
            metrics.update(training.row(sampled, times))
            last_end, idle_before = time.perf_counter(), schedule.sampler_idle_s()
            ml_logger.log_metrics(metrics, step=step)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < run.n_steps:
                await run.checkpoint(f"{step + 1:06d}", step + 1, extra=schedule.checkpoint_state())
            result.steps.append({"step": step, **metrics})
            run.progress.step_done(step, run.n_steps, metrics)
            if on_step is not None:
                on_step(step, metrics)


async def _final(
    run: TrainingRun,
    ml_logger: ml_log.Logger,
    result: TrainResult,
    resume: CheckpointRecord | None,
    schedule: Schedule,
) -> None:
    """The final evaluation and checkpoint, or, for a run its checkpoint already covers, its paths.

    Both are labelled with the step the run reached (``result.end_step``: ``n_steps`` unless the
    stream of groups ended early), and the checkpoint carries the schedule's state as every
    checkpoint does: a resume from it starts at that step, with the groups it already trained."""
    reached = result.end_step
    if result.start_step < run.n_steps or resume is None:
        evaluated = bool(result.evals) and result.evals[-1]["step"] == reached  # these weights, at that step
        if run.val_ds is not None and run.config.eval_every and not evaluated:
            evaluation = await run.evaluate(reached)
            result.evals.append({"step": reached, **evaluation})
            ml_logger.log_metrics(evaluation, step=reached)
        paths = await run.checkpoint("final", reached, final=True, extra=schedule.checkpoint_state())
        result.final_state_path = paths.get("state_path")
        result.final_sampler_path = paths.get("sampler_path")
    else:
        result.final_state_path = resume.state_path
        result.final_sampler_path = resume.sampler_path


def _write_curves(run: TrainingRun, result: TrainResult) -> None:
    """The run's reward curve, and each named policy's in its directory."""
    result.curve_path = write_reward_curve(
        result.metrics_path, Path(run.config.log_path) / "reward_curve.png"
    )
    result.policy_checkpoints = dict(run.clients.latest)
    for name, directory in run.policy_dirs().items():
        curve = write_reward_curve(
            result.metrics_path, directory / "reward_curve.png", prefix=f"policy/{name}/"
        )
        if curve is not None:
            result.policy_curves[name] = curve
