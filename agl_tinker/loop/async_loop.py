"""Overlapped training: streaming minibatches and asynchronous off-policy steps, the cookbook's way.

``TrainConfig.async_config`` (the cookbook's ``AsyncConfig``) turns on asynchronous training: the
groups of the whole run are one stream fed to a :class:`ContinuousDispatcher`; a step trains as
soon as ``groups_per_batch`` groups are complete, new weights are swapped into the endpoint
without draining it (answers in flight finish on the weights they started with, and every call
records its weights version), and the next groups keep running meanwhile. A group whose oldest
call is more than ``max_steps_off_policy`` versions behind the step about to train is stale: it
is requeued (rolled out again) while groups of the run remain undispatched, and dropped after
that, as the cookbook does (it stops requeuing once its data loader is done). Stale groups are
counted and never trained. Off-policy data that is within the bound is corrected, not ignored:
datums carry the logprobs the sampler returned, and the importance-sampling (or PPO) loss
weighs each token by ``exp(logprob_now - logprob_sampled)``.

``TrainConfig.stream_minibatch_config`` (the cookbook's ``StreamMinibatchConfig``) streams
minibatches: ``forward_backward`` runs on each minibatch of groups as soon as it is complete,
while the rest of the batch is still sampling; one ``optim_step`` per substep. Without
``async_config`` the steps stay synchronous (every group is sampled with the current weights,
the next batch starts after the swap); with it, each asynchronous batch is trained that way.

Bookkeeping (the resume contract): each group of the run has a key, its position in the run's
stream (``batch * batch_size + index``). Every group taken off the stream ends in
``groups.jsonl`` (in the log directory) as ``trained``, ``excluded`` (dropped by
``min_valid_per_group`` or as constant-reward), ``stale_dropped``, or ``stale_requeued`` (then it
comes back). A checkpoint records which keys are done; a restarted run skips exactly those and
rolls out the others again (groups in flight or finished but untrained at a kill are not lost),
so no group is trained twice in the weights. :func:`effective_ledger` reads ``groups.jsonl``
as the surviving weights saw it (lines of steps a restart redid are superseded).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentlightning.types import RolloutConfig
from tinker_cookbook import checkpoint_utils
from tinker_cookbook.utils import ml_log

from agl_tinker.core.trajectory import RolloutTrajectory
from agl_tinker.dispatch.batch import (
    BatchResult,
    DispatchConfig,
    DispatchStats,
    GroupResult,
    RolloutsLost,
    StoreCallError,
)
from agl_tinker.dispatch.continuous import ContinuousDispatcher, FinishedGroup, GroupRequest
from agl_tinker.loop.batch_metrics import batch_metrics
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.errors import StepStalled, StoreLost
from agl_tinker.loop.result import TrainResult
from agl_tinker.loop.step_metrics import StepTimes, call_staleness, step_row
from agl_tinker.loop.step_trainer import BusyClock, StepTrainer
from agl_tinker.loop.training_run import TrainingRun
from agl_tinker.run.flat_reward import group_reward_metrics

__all__ = ["LEDGER_FILE", "effective_ledger", "overlapped", "run_overlapped"]

logger = logging.getLogger(__name__)

LEDGER_FILE = "groups.jsonl"
FINAL_OUTCOMES = frozenset({"trained", "excluded", "stale_dropped"})


def overlapped(config: TrainConfig) -> bool:
    """Whether ``config`` asks for streaming minibatches or asynchronous training."""
    return config.async_config is not None or config.stream_minibatch_config is not None


# --------------------------------------------------------------------------------------------- ledger


@dataclass
class _Ledger:
    """Where each group of the run ended up (``groups.jsonl``), and what a checkpoint records."""

    path: Path
    start_step: int
    done: set[int] = field(default_factory=set)

    def record(self, step: int, group: FinishedGroup[Any], outcome: str, staleness: int) -> None:
        if outcome in FINAL_OUTCOMES:
            self.done.add(group.request.key)
        line = {
            "run_start": self.start_step,
            "step": step,
            "key": group.request.key,
            "attempt": group.request.attempt,
            "outcome": outcome,
            "staleness": staleness,
        }
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def loop_state(self) -> dict[str, Any]:
        """Checkpoint extras: every key below ``async_done_below`` is done, plus ``async_done``."""
        below = 0
        while below in self.done:
            below += 1
        return {
            "async_done_below": below,
            "async_done": sorted(k for k in self.done if k > below),
        }

    @classmethod
    def resume(cls, path: Path, start_step: int, batch_size: int, extra: Mapping[str, Any]) -> _Ledger:
        """The ledger a checkpoint describes; a synchronous checkpoint means whole batches done."""
        below = int(extra.get("async_done_below", start_step * batch_size))
        done = set(range(below)) | {int(k) for k in extra.get("async_done", [])}
        return cls(path, start_step, done)


def effective_ledger(log_path: str | Path) -> list[dict[str, Any]]:
    """The lines of ``groups.jsonl`` that the final weights reflect.

    A restarted run (``run_start`` = the step it resumed at) redoes every step from there, so an
    earlier run's lines of those steps are superseded; the rest are kept, in file order.
    """
    kept: list[dict[str, Any]] = []
    current: int | None = None
    for raw in (Path(log_path) / LEDGER_FILE).read_text().splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        if line["run_start"] != current:
            current = line["run_start"]
            kept = [x for x in kept if x["step"] < line["run_start"]]
        kept.append(line)
    return kept


# --------------------------------------------------------------------------------------------- staleness


def _staleness(group: FinishedGroup[RolloutTrajectory], step: int) -> int:
    """Versions the group's oldest call is behind ``step`` (0 for a group without versions)."""
    return max(call_staleness(group.outcomes, step), default=0)


# --------------------------------------------------------------------------------------------- the loop


def _as_batch(groups: Sequence[FinishedGroup[RolloutTrajectory]]) -> BatchResult[RolloutTrajectory]:
    """The step's groups in the shape the synchronous loop's metrics take."""
    outcomes = [o for g in groups for o in g.outcomes]
    stats = DispatchStats(
        n_rollouts=len(outcomes),
        n_skipped=0,
        status_counts={},
        wall_s=0.0,
        enqueue_s=0.0,
        wait_s=0.0,
        process_s=0.0,
        max_in_flight=0,
        overheads_s=tuple(o.overhead_s for o in outcomes if o.overhead_s is not None),
        detects_s=tuple(o.detect_s for o in outcomes if o.detect_s is not None),
        reads_s=tuple(o.read_s for o in outcomes if o.read_s is not None),
    )
    return BatchResult(
        groups=tuple(
            GroupResult(group_index=g.request.key, task=g.request.task, outcomes=g.outcomes) for g in groups
        ),
        stats=stats,
    )


class _OverlappedRun:
    """One run of :func:`run_overlapped`: the stream of groups, the dispatcher, the steps."""

    def __init__(
        self,
        loop: TrainingRun,
        ml_logger: ml_log.Logger,
        result: TrainResult,
        n_steps: int,
        resume: checkpoint_utils.CheckpointRecord | None,
        on_step: Callable[[int, Mapping[str, Any]], None] | None,
    ) -> None:
        self.loop = loop
        self.cfg = loop.config
        self.ml_logger = ml_logger
        self.result = result
        self.n_steps = n_steps
        self.on_step = on_step
        self.start_step = result.start_step
        self.batch_size = self.cfg.batch_size
        ledger_path = Path(self.cfg.log_path) / LEDGER_FILE
        if resume is not None:
            self.ledger = _Ledger.resume(ledger_path, self.start_step, self.batch_size, resume.extra)
        else:
            self.ledger = _Ledger(ledger_path, self.start_step)
        asynchronous = self.cfg.async_config
        self.max_off_policy = asynchronous.max_steps_off_policy if asynchronous is not None else 0
        self.clock = BusyClock()

    def _stream(self, first_batch: int, last_batch: int) -> list[GroupRequest]:
        """The run's groups of batches ``[first_batch, last_batch)`` that are not done yet."""
        requests = []
        for b in range(first_batch, last_batch):
            for j, task in enumerate(self.loop.train_ds.get_batch(b)):
                key = b * self.batch_size + j
                if key not in self.ledger.done:
                    requests.append(GroupRequest(key=key, task=task))
        return requests

    def _dispatcher(self) -> ContinuousDispatcher[RolloutTrajectory]:
        cfg = self.cfg
        loop = self.loop
        rollout_config = RolloutConfig(
            timeout_seconds=cfg.rollout_timeout_s,
            max_attempts=cfg.max_attempts,
            retry_condition=["failed", "timeout", "unresponsive"] if cfg.max_attempts > 1 else [],
        )
        dispatch = DispatchConfig(
            mode="train",
            resources_id=loop.train_resources_id,
            rollout_config=rollout_config,
            before_read=loop.endpoint.flush if loop.endpoint is not None else None,
            # It counts the calls it served: a rollout's spans holding fewer lost the rest.
            call_counts=loop.endpoint,
        )
        # Async: about max_steps_off_policy batches ahead of the trainer, so a group is normally
        # trained within its staleness bound. Streaming alone: one batch at a time.
        ahead = max(1, self.max_off_policy) if cfg.async_config is not None else 1
        return ContinuousDispatcher(
            loop.store,
            cfg.group_size,
            loop.process,
            config=dispatch,
            max_groups=ahead * self.batch_size,
            max_rollouts=cfg.max_in_flight,
        )

    async def run(self) -> None:
        asynchronous = self.cfg.async_config is not None
        async with self._dispatcher() as dispatcher:
            if asynchronous:
                await dispatcher.submit(self._stream(0, self.n_steps))
            last_end = time.perf_counter()
            for step in range(self.start_step, self.n_steps):
                metrics: dict[str, Any] = {}
                if self.loop.val_ds is not None and self.cfg.eval_every and step % self.cfg.eval_every == 0:
                    evaluation = await self.loop.evaluate(step)
                    self.result.evals.append({"step": step, **evaluation})
                    metrics.update(evaluation)
                if not asynchronous:
                    await dispatcher.submit(self._stream(step, step + 1))
                step_metrics = await self._step(dispatcher, step, last_end)
                if step_metrics is None:
                    logger.info("no groups left to train at step %d: the run ends early", step)
                    break
                last_end = time.perf_counter()
                metrics.update(step_metrics)
                self.ml_logger.log_metrics(metrics, step=step)
                if self.cfg.save_every and (step + 1) % self.cfg.save_every == 0 and step + 1 < self.n_steps:
                    await self.loop.checkpoint(f"{step + 1:06d}", step + 1, extra=self.ledger.loop_state())
                self.result.steps.append({"step": step, **metrics})
                self.loop.progress.step_done(step, self.n_steps, metrics)
                if self.on_step is not None:
                    self.on_step(step, metrics)
            self._record_unfinished(dispatcher)

    def _record_unfinished(self, dispatcher: ContinuousDispatcher[RolloutTrajectory]) -> None:
        left = dispatcher.pending_groups + dispatcher.running_groups + dispatcher.waiting_groups
        if left:
            logger.warning("%d groups were neither trained nor dropped when the run ended", left)

    async def _next_group(
        self, dispatcher: ContinuousDispatcher[RolloutTrajectory], step: int
    ) -> FinishedGroup[RolloutTrajectory]:
        """The next finished group; the run stops (never hangs) when none finishes for the stall
        deadline times ``group_size`` (runners hung, dead or gone), or the store is lost."""
        stall = self.loop.stall_timeout_s()
        limit = None if stall is None else stall * self.cfg.group_size
        try:
            return await asyncio.wait_for(dispatcher.next_group(), limit)
        except TimeoutError:
            raise StepStalled(
                f"no group finished for {limit:.0f}s at step {step}: are the runners alive, or stuck "
                "inside agents? (rollout_timeout_s x max_attempts x group_size, plus grace)"
            ) from None
        except (StoreCallError, RolloutsLost) as exc:
            raise StoreLost(self.loop.lost_message(step, exc)) from exc

    async def _step(
        self, dispatcher: ContinuousDispatcher[RolloutTrajectory], step: int, last_end: float
    ) -> dict[str, Any] | None:
        """Collect ``batch_size`` fresh-enough groups (training minibatches as they come), train,
        swap; the step's metrics, or ``None`` when the stream has nothing left."""
        learner = self.loop.learners()[0]
        trainer = StepTrainer(
            learner, self.cfg, self.clock, self.batch_size, self.cfg.stream_minibatch_config
        )
        busy_before = self.clock.busy_s
        idle_before = dispatcher.sampler_idle_s()
        read_before = dispatcher.read_s
        taken: list[tuple[FinishedGroup[RolloutTrajectory], int]] = []
        requeued = dropped = 0
        waiting_s = 0.0
        while len(taken) < self.batch_size:
            if not (dispatcher.pending_groups or dispatcher.running_groups or dispatcher.waiting_groups):
                break
            t_wait = time.perf_counter()
            group = await self._next_group(dispatcher, step)
            waiting_s += time.perf_counter() - t_wait
            staleness = _staleness(group, step)
            if staleness > self.max_off_policy:
                if dispatcher.pending_groups:
                    requeued += 1
                    self.ledger.record(step, group, "stale_requeued", staleness)
                    retry = GroupRequest(group.request.key, group.request.task, group.request.attempt + 1)
                    await dispatcher.submit([retry], front=True)
                else:
                    dropped += 1
                    self.ledger.record(step, group, "stale_dropped", staleness)
                continue
            taken.append((group, staleness))
            await trainer.add(group.request.key, [o.result for o in group.outcomes])
        if not taken:
            return None
        t_collected = time.perf_counter()
        in_flight = dispatcher.running_groups
        await trainer.finish()
        t_trained = time.perf_counter()
        assert self.loop.endpoint is not None
        await learner.publish(self.loop.endpoint, step + 1, self.clock)
        t_end = time.perf_counter()
        for group, staleness in taken:
            outcome = "trained" if group.request.key in trainer.trained else "excluded"
            self.ledger.record(step, group, outcome, staleness)

        batch = _as_batch([g for g, _ in taken])
        _, metrics = batch_metrics(batch, step)
        metrics.update(self.loop.transcripts.write(step, batch.groups))
        metrics.update(trainer.metrics())
        metrics.update(group_reward_metrics(trainer.valid))
        metrics.update(self.loop.retrier.take_metrics())
        self.loop.check_trainable(step, batch, trainer.valid)  # empty steps: logged, and bounded
        times = StepTimes(
            step_s=t_end - last_end,
            sampling_s=t_collected - last_end,
            waiting_s=waiting_s,
            processing_s=dispatcher.read_s - read_before,
            training_s=t_trained - t_collected,
            swap_s=t_end - t_trained,
            trainer_busy_s=self.clock.busy_s - busy_before,
            sampler_idle_s=dispatcher.sampler_idle_s() - idle_before,
        )
        epoch = self.loop.train_ds.epoch_of(min(step, len(self.loop.train_ds) - 1))
        metrics.update(
            step_row(
                batch,
                step,
                epoch=epoch,
                times=times,
                requeued=requeued,
                stale_dropped=dropped,
                groups_in_flight=in_flight,
                runner_restarts=self.loop.take_runner_restarts(),
            )
        )
        metrics.update(self.loop.endpoint.span_metrics())  # spans the recorder could not store
        return metrics


async def run_overlapped(
    loop: TrainingRun,
    ml_logger: ml_log.Logger,
    result: TrainResult,
    n_steps: int,
    resume: checkpoint_utils.CheckpointRecord | None,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> int:
    """Run steps ``result.start_step .. n_steps`` streaming and/or asynchronously (see the module
    docstring); returns the step the caller's synchronous loop continues from (``n_steps``).

    Metrics are logged per step (the synchronous loop's plus ``staleness/*``, ``async/*``,
    ``time/trainer_idle_frac``, ``time/sampler_idle_frac``), checkpoints every ``save_every``
    steps carry the done groups, and ``on_step`` is called after each step.
    """
    await _OverlappedRun(loop, ml_logger, result, n_steps, resume, on_step).run()
    return n_steps
