"""The schedules: when a run's groups are dispatched and when a step has its groups.

:func:`pick_schedule` picks one by the config, in plain sight, the way the cookbook's ``main()``
picks its training function:

* :class:`BatchSchedule` (synchronous): each step dispatches its batch through the store
  (:func:`~agl_tinker.dispatch.batch.dispatch_batch`), every group sampled on the current weights,
  and trains once all of it is back.
* :class:`ContinuousSchedule` with ``stream_minibatch_config`` alone (streamed minibatches): each
  step's batch is dispatched continuously and its groups handed to the step as they finish, so
  ``forward_backward`` runs on each minibatch while the rest is still sampling; still on-policy.
* :class:`ContinuousSchedule` with ``async_config`` (overlapped, off-policy): the groups of the
  whole run are one stream kept :func:`groups_ahead` groups ahead of the trainer; a step takes
  the next ``batch_size`` fresh-enough groups while the next ones keep running on older weights.
  A group whose oldest call is more than ``max_steps_off_policy`` versions behind the step about to
  train is stale: it is requeued (rolled out again) while groups of the run remain undispatched,
  and dropped after that, as the cookbook does. Stale groups are counted and never trained.
  Off-policy data within the bound is corrected, not ignored: datums carry the sampler's logprobs
  and the importance-sampling (or PPO) loss weighs each token by ``exp(logprob_now - logprob_sampled)``.
  With ``sampling_steps_ahead`` the stream is paced instead (:class:`~agl_tinker.loop.pacing.Pacer`):
  groups are released only so far ahead of the trainer and a step waits for the groups that are due,
  so none goes stale and none is requeued or dropped.

A schedule only dispatches and hands groups to a :class:`~agl_tinker.loop.step.TrainingStep`;
the outer loop (:func:`agl_tinker.loop.train.run_steps`) trains, publishes, logs and checkpoints,
and carries :meth:`Schedule.checkpoint_state` (the continuous schedule's group ledger) in each
checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from tinker_cookbook.checkpoint_utils import CheckpointRecord
from tinker_cookbook.rl.train import StreamMinibatchConfig

from agl_tinker.dispatch.continuous import ContinuousDispatcher, FinishedGroup, GroupRequest
from agl_tinker.dispatch.types import (
    BatchResult,
    DispatchStats,
    GroupResult,
    RolloutsLost,
    StoreCallError,
)
from agl_tinker.loop.checkpoints import ResumeError
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.errors import StepStalled, StoreLost
from agl_tinker.loop.ledger import LEDGER_FILE, GroupLedger
from agl_tinker.loop.pacing import Pacer
from agl_tinker.loop.policy import PolicyResults, outcome_view
from agl_tinker.loop.progress import step_label
from agl_tinker.loop.step import Sampled, TrainingStep
from agl_tinker.loop.step_metrics import call_staleness
from agl_tinker.loop.training_run import TrainingRun

__all__ = ["BatchSchedule", "ContinuousSchedule", "Schedule", "groups_ahead", "pick_schedule"]

logger = logging.getLogger(__name__)


class Schedule(Protocol):
    """When groups are dispatched and when a step has its groups; nothing else."""

    stream: StreamMinibatchConfig | None
    """Streaming-minibatch settings the step trains with (``None``: the whole step at once)."""

    def running(self) -> Any:
        """``async with schedule.running():`` around the steps (starts and stops dispatch)."""
        ...

    async def fill(self, step: TrainingStep) -> Sampled | None:
        """Hand ``step`` its groups (as they finish); what was collected, ``None`` when none are left."""
        ...

    def after_step(self, step: TrainingStep) -> None:
        """The step trained and published: record where its groups ended up."""
        ...

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint must carry for a restart to resume this schedule."""
        ...

    def sampler_idle_s(self) -> float:
        """Total time so far during which no training rollout of the run was unfinished."""
        ...


def pick_schedule(run: TrainingRun, resume: CheckpointRecord | None, start_step: int) -> Schedule:
    """The run's schedule: synchronous batches, streamed minibatches, or overlapped async steps.

    Raises:
        ResumeError: the checkpoint was saved by an asynchronous run whose done groups are not the
            first ``start_step`` batches, and this run is not asynchronous: only the asynchronous
            schedule rolls out exactly the groups not done, so another one would train some groups
            twice and lose others.
    """
    cfg = run.config
    if cfg.async_config is None and resume is not None:
        _refuse_partial_batches(resume, start_step, cfg.batch_size)
    if cfg.async_config is None and cfg.stream_minibatch_config is None:
        return BatchSchedule(run)
    return ContinuousSchedule(run, resume, start_step)


def _refuse_partial_batches(resume: CheckpointRecord, start_step: int, batch_size: int) -> None:
    """Refuse a checkpoint whose group ledger is not whole batches (see :func:`pick_schedule`)."""
    ledger = GroupLedger.resume(Path(), start_step, batch_size, resume.extra)
    if ledger.done != set(range(start_step * batch_size)):
        raise ResumeError(
            f"checkpoint {resume.name!r} was saved by an asynchronous run: the groups it trained are "
            f"not the first {start_step} batches (groups.jsonl), so only async_config resumes it "
            "without training a group twice or losing one; resume with the run's async_config, "
            "or set fresh_start=True"
        )


class BatchSchedule:
    """Synchronous steps: dispatch the step's batch, hand over every group once all are back."""

    stream: StreamMinibatchConfig | None = None

    def __init__(self, run: TrainingRun) -> None:
        self.run = run
        self._idle_s = 0.0
        self._idle_since: float | None = time.perf_counter()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[BatchSchedule]:
        yield self

    async def fill(self, step: TrainingStep) -> Sampled:
        run, index = self.run, step.step
        await run.check_store(index)
        self._idle_stops()
        label = step_label(index, run.n_steps)
        tasks = run.train_ds.get_batch(index)
        batch = await run.dispatch(tasks, run.config.group_size, "train", label, index, run.process)
        self._idle_since = time.perf_counter()
        for group in batch.groups:
            await step.add(group.group_index, group.results)
        return Sampled(batch, waiting_s=batch.stats.wait_s, processing_s=batch.stats.process_s)

    def after_step(self, step: TrainingStep) -> None:
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        return {}

    def sampler_idle_s(self) -> float:
        since = self._idle_since
        return self._idle_s + (time.perf_counter() - since if since is not None else 0.0)

    def _idle_stops(self) -> None:
        if self._idle_since is not None:
            self._idle_s += time.perf_counter() - self._idle_since
            self._idle_since = None


def groups_ahead(config: TrainConfig) -> int:
    """When to dispatch: how many groups may be in flight or finished-untrained ahead of the trainer.

    Async: about ``max_steps_off_policy`` batches, so a group is normally trained within its
    staleness bound. Streaming alone: the step's own batch."""
    asynchronous = config.async_config
    ahead = max(1, asynchronous.max_steps_off_policy) if asynchronous is not None else 1
    return ahead * config.batch_size


class ContinuousSchedule:
    """Streamed minibatches and overlapped asynchronous steps over one continuous dispatcher."""

    def __init__(self, run: TrainingRun, resume: CheckpointRecord | None, start_step: int) -> None:
        self.run = run
        cfg = run.config
        self.stream = cfg.stream_minibatch_config
        self.asynchronous = cfg.async_config is not None
        self.max_off_policy = cfg.async_config.max_steps_off_policy if cfg.async_config is not None else 0
        path = Path(cfg.log_path) / LEDGER_FILE
        extra: Mapping[str, Any] = resume.extra if resume is not None else {}
        if resume is not None:
            self.ledger = GroupLedger.resume(path, start_step, cfg.batch_size, extra)
        else:
            self.ledger = GroupLedger(path, start_step)
        self._dispatcher: ContinuousDispatcher[PolicyResults] | None = None
        self._taken: list[tuple[FinishedGroup[PolicyResults], int]] = []
        self.pacer: Pacer[PolicyResults] | None = None
        if cfg.sampling_steps_ahead is not None:
            self.pacer = Pacer(self._requests(0, run.n_steps), cfg.batch_size, cfg.sampling_steps_ahead)

    def _requests(self, first_batch: int, last_batch: int) -> list[GroupRequest]:
        """The run's groups of batches ``[first_batch, last_batch)`` that are not done yet."""
        size = self.run.config.batch_size
        return [
            GroupRequest(key=b * size + j, task=task)
            for b in range(first_batch, last_batch)
            for j, task in enumerate(self.run.train_ds.get_batch(b))
            if b * size + j not in self.ledger.done
        ]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ContinuousSchedule]:
        run, cfg = self.run, self.run.config
        dispatcher = ContinuousDispatcher(
            run.store,
            cfg.group_size,
            run.process,
            config=run.dispatch_config("train"),
            max_groups=None if self.pacer is not None else groups_ahead(cfg),  # paced: the pacer bounds
            max_rollouts=cfg.max_in_flight,
        )
        async with dispatcher:
            self._dispatcher = dispatcher
            if self.asynchronous and self.pacer is None:
                await dispatcher.submit(self._requests(0, run.n_steps))
            yield self
            left = dispatcher.pending_groups + dispatcher.running_groups + dispatcher.waiting_groups
            if self.pacer is not None:
                left = self.pacer.outstanding + self.pacer.unreleased
            if left:
                logger.warning("%d groups were neither trained nor dropped when the run ended", left)

    def _has_groups(self) -> bool:
        d = self._dispatcher
        assert d is not None
        return bool(d.pending_groups or d.running_groups or d.waiting_groups)

    async def fill(self, step: TrainingStep) -> Sampled | None:
        dispatcher = self._dispatcher
        assert dispatcher is not None, "fill() runs inside running()"
        index = step.step
        await self.run.check_store(index)  # a restarted store is noticed here, with the run's message
        # Paced: the step's weights are served, so the pacer releases what they allow now; the
        # groups reach the store only once the step has taken what already finished (or must wait):
        # starting them first would make the runners compete with the step's hand-over.
        to_submit = self.pacer.release() if self.pacer is not None else []
        if not self.asynchronous:
            await dispatcher.submit(self._requests(index, index + 1))
        read_before = dispatcher.read_s
        self._taken = []
        requeued = dropped = 0
        waiting_s = 0.0
        batch_size = self.run.config.batch_size
        while len(self._taken) < batch_size:
            if self.pacer is not None:
                for finished in self._drain(dispatcher, index):
                    self.pacer.hold(finished)
                picked = self.pacer.take_next(batch_size - len(self._taken))
                if picked is None and to_submit:
                    await dispatcher.submit(to_submit)
                    to_submit = []
                    continue
                if picked is None and self.pacer.outstanding:
                    t_wait = time.perf_counter()
                    self.pacer.hold(await self._next_group(dispatcher, index))
                    waiting_s += time.perf_counter() - t_wait
                    continue
                if picked is None:
                    break
                group = picked
            elif not self._has_groups():
                break
            else:
                t_wait = time.perf_counter()
                group = await self._next_group(dispatcher, index)
                waiting_s += time.perf_counter() - t_wait
            staleness = _staleness(group, index)
            if staleness > self.max_off_policy:
                # Paced groups are never this stale (pacing.py); were one, it is dropped and counted.
                if dispatcher.pending_groups and self.pacer is None:
                    requeued += 1
                    self.ledger.record(index, group, "stale_requeued", staleness)
                    retry = GroupRequest(group.request.key, group.request.task, group.request.attempt + 1)
                    await dispatcher.submit([retry], front=True)
                else:
                    dropped += 1
                    self.ledger.record(index, group, "stale_dropped", staleness)
                continue
            self._taken.append((group, staleness))
            await step.add(group.request.key, [o.result for o in group.outcomes])
        if to_submit:
            await dispatcher.submit(to_submit)
        if not self._taken:
            return None
        return Sampled(
            _as_batch([g for g, _ in self._taken]),
            waiting_s=waiting_s,
            processing_s=dispatcher.read_s - read_before,
            requeued=requeued,
            stale_dropped=dropped,
            groups_in_flight=dispatcher.running_groups,
        )

    async def _next_group(
        self, dispatcher: ContinuousDispatcher[PolicyResults], step: int
    ) -> FinishedGroup[PolicyResults]:
        """The next finished group; the run stops (never hangs) when none finishes for the stall
        deadline times ``group_size`` (runners hung, dead or gone), or the store is lost."""
        stall = self.run.stall_timeout_s()
        limit = None if stall is None else stall * self.run.config.group_size
        try:
            return await asyncio.wait_for(dispatcher.next_group(), limit)
        except TimeoutError:
            raise StepStalled(
                f"no group finished for {limit:.0f}s at step {step}: are the runners alive, or stuck "
                "inside agents? (rollout_timeout_s x max_attempts x group_size, plus grace)"
            ) from None
        except (StoreCallError, RolloutsLost) as exc:
            raise StoreLost(self.run.lost_message(step, exc)) from exc

    def _drain(
        self, dispatcher: ContinuousDispatcher[PolicyResults], step: int
    ) -> list[FinishedGroup[PolicyResults]]:
        """Every group finished and not handed out yet, without waiting (nor yielding to the loop)."""
        try:
            return dispatcher.take_finished()
        except (StoreCallError, RolloutsLost) as exc:
            raise StoreLost(self.run.lost_message(step, exc)) from exc

    def after_step(self, step: TrainingStep) -> None:
        if self.pacer is not None:  # the step's new weights are published
            self.pacer.step_trained()
        trained = step.trained
        for group, staleness in self._taken:
            outcome = "trained" if group.request.key in trained else "excluded"
            self.ledger.record(step.step, group, outcome, staleness)

    def checkpoint_state(self) -> dict[str, Any]:
        return self.ledger.loop_state()

    def sampler_idle_s(self) -> float:
        return self._dispatcher.sampler_idle_s() if self._dispatcher is not None else 0.0


def _staleness(group: FinishedGroup[PolicyResults], step: int) -> int:
    """Versions the group's oldest call (of any policy) is behind ``step`` (0 without versions)."""
    names = group.outcomes[0].result.keys() if group.outcomes else ()
    return max(
        (s for name in names for s in call_staleness((outcome_view(o, name) for o in group.outcomes), step)),
        default=0,
    )


def _as_batch(groups: Sequence[FinishedGroup[PolicyResults]]) -> BatchResult[PolicyResults]:
    """The step's groups in the shape a dispatched batch has (for the metrics row)."""
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
