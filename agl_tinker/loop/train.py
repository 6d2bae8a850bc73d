"""The RL loop: Agent-lightning rollouts in, tinker-cookbook train steps out, new weights hot-swapped.

One step: enqueue a batch of tasks x group_size into the store, wait for the runners (event-driven),
rebuild each rollout's trajectory from its spans (the pure core), turn groups into datums with the
cookbook's own advantage and assembly functions, ``forward_backward`` + ``optim_step`` through the
cookbook's ``train_step``, and swap the new sampling client into the running endpoint. Checkpoints
go through the cookbook's ``checkpoint_utils``; a restarted run resumes at the batch after the last
checkpoint, so no batch is trained twice or skipped.

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
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agentlightning.store.base import LightningStore
from tinker_cookbook.utils import ml_log

from agl_tinker import backend
from agl_tinker.loop.checkpoints import truncate_metrics
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.data import TaskDataset, build_datasets
from agl_tinker.loop.report import write_reward_curve
from agl_tinker.loop.result import TrainResult
from agl_tinker.loop.training_run import TrainingRun
from agl_tinker.run.announce import announce_run, with_first_metrics
from agl_tinker.run.claim import claim_run, release_run
from agl_tinker.run.identity import record_run

__all__ = ["TrainResult", "resume_message", "train"]


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
    runner_stats: Mapping[str, int] | None = None,
) -> TrainResult:
    """Train the policy behind the endpoint on rollouts run by whatever runners serve ``store``.

    ``train_tasks``/``val_tasks``: lists of task dicts or CSV/JSONL/Parquet paths. Runners (in
    this process, other processes or other machines) must be dequeuing from ``store``; they get
    the endpoint as the ``main_llm`` resource. ``service`` defaults to ``backend.service_client()``.
    The run holds the lock of ``config.log_path`` until it returns or raises
    (:mod:`agl_tinker.run.lock`; another run there fails at once) and logs to ``run.log`` there.
    ``runner_stats``: the live runner-fault counts of the strategy running the runners (keys in
    :mod:`agl_tinker.runners.supervise`), read at each step: its ``runners/restarts`` metric is
    the restarts during that step (0 when not given, e.g. runners started by hand elsewhere).
    """
    claim_run(config)
    try:
        return await _train_claimed(
            config,
            store,
            train_tasks,
            val_tasks,
            required_fields=required_fields,
            service=service,
            show_progress=show_progress,
            on_step=on_step,
            runner_stats=runner_stats,
        )
    finally:
        release_run(config)


async def _train_claimed(
    config: TrainConfig,
    store: LightningStore,
    train_tasks: Any,
    val_tasks: Any = None,
    *,
    required_fields: Sequence[str] = (),
    service: Any = None,
    show_progress: bool = True,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
    runner_stats: Mapping[str, int] | None = None,
) -> TrainResult:
    """:func:`train`, with ``config.log_path`` claimed."""
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
    override_metrics = record_run(config, train_ds.tasks)
    owns_service = service is None  # a service the run creates is closed by the run (ends a live session)
    loop_type = TrainingRun
    if config.policies:
        from agl_tinker.loop.policies import MultiPolicyLoop  # it builds on this module

        loop_type = MultiPolicyLoop
    loop = loop_type(
        config,
        store,
        train_ds,
        val_ds,
        service or backend.service_client(),
        show_progress,
        n_steps,
        runner_stats=runner_stats,
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
    ml_logger = with_first_metrics(ml_logger, override_metrics)
    loop.progress.note(announce_run(config))  # the backend and where the outputs go, first
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
