"""One training step over the run's list of policies: groups in, optimiser steps, new weights, one row.

Every schedule (:mod:`agl_tinker.loop.schedules`) fills a :class:`TrainingStep` with the step's
finished groups (:meth:`TrainingStep.add`, as they arrive: a streaming schedule trains minibatches
meanwhile); :func:`agl_tinker.loop.train.train` then :meth:`~TrainingStep.finish` -es it (what is
left of the optimiser steps), :meth:`~TrainingStep.publish` -es every policy's new weights, and
logs :meth:`~TrainingStep.row`. Each policy trains through its own
:class:`~agl_tinker.loop.step_trainer.StepTrainer` on its reading of the groups; a single-policy
run is a list of one, so every mode and every policy count shares this one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tinker_cookbook.rl.train import StreamMinibatchConfig

from agl_tinker.dispatch.types import BatchResult
from agl_tinker.loop.policy import PolicyResults, policy_view
from agl_tinker.loop.policy_metrics import rollout_metrics, staleness_by_policy, write_transcripts
from agl_tinker.loop.step_metrics import StepTimes, step_row, sum_policy_metrics
from agl_tinker.loop.step_trainer import BusyClock, StepTrainer
from agl_tinker.loop.training_run import TrainingRun
from agl_tinker.run.flat_reward import group_reward_metrics

__all__ = ["Sampled", "TrainingStep"]

_SUMMED = ("train/datums", "groups/trained", "groups/dropped", "groups/constant_removed")
"""Top-level keys of a several-policy step: the sum of the policies' own."""


@dataclass(frozen=True)
class Sampled:
    """What a schedule collected for one step, and what it measured doing so.

    Attributes:
        batch: the step's groups (stale ones left out), in the order they were added.
        waiting_s: time spent waiting for rollouts to finish.
        processing_s: time spent reading finished rollouts and rebuilding their trajectories.
        requeued, stale_dropped: groups found too stale this step (asynchronous only).
        groups_in_flight: groups still running when the step started training.
    """

    batch: BatchResult[PolicyResults]
    waiting_s: float
    processing_s: float
    requeued: int = 0
    stale_dropped: int = 0
    groups_in_flight: int = 0


class TrainingStep:
    """Step ``step`` of ``run``: one :class:`StepTrainer` per policy, fed the same groups.

    Args:
        run: the run (its policies, endpoint, transcripts, retries).
        step: the step's index; :meth:`publish` serves its weights as version ``step + 1``.
        clock: the run's training-client clock (``time/trainer_busy_s``).
        stream: the cookbook's streaming-minibatch settings, ``None`` to train the whole step at once.
    """

    def __init__(
        self, run: TrainingRun, step: int, clock: BusyClock, stream: StreamMinibatchConfig | None
    ) -> None:
        self.run = run
        self.step = step
        cfg = run.config
        self.trainers = [
            StepTrainer(learner, cfg, clock, cfg.batch_size, stream) for learner in run.learners()
        ]

    async def add(self, key: int, results: list[PolicyResults]) -> None:
        """One finished group under ``key``: each rollout read once per policy (see ``TrainingRun.process``)."""
        for trainer in self.trainers:
            await trainer.add(key, [r[trainer.learner.name] for r in results])

    async def finish(self) -> None:
        """Train what is left of the step, policy after policy."""
        for trainer in self.trainers:
            await trainer.finish()

    async def publish(self, clock: BusyClock) -> None:
        """Serve every policy's new weights as version ``step + 1`` from the next request on."""
        assert self.run.endpoint is not None
        for trainer in self.trainers:
            await trainer.learner.publish(self.run.endpoint, self.step + 1, clock)

    @property
    def trained(self) -> set[int]:
        """Keys of the groups some policy trained on."""
        return set().union(*(t.trained for t in self.trainers))

    def check_trainable(self, sampled: Sampled) -> None:
        """A step that trained no policy on anything is logged, and bounded (``max_empty_steps``)."""
        first = policy_view(sampled.batch, self.run.names[0])
        self.run.check_trainable(self.step, first, any(t.valid for t in self.trainers))

    def row(self, sampled: Sampled, times: StepTimes) -> dict[str, Any]:
        """The step's metrics row: the same keys in every schedule (a policy's under its prefix)."""
        run, step, names = self.run, self.step, self.run.names
        batch = sampled.batch
        metrics = rollout_metrics(batch, step, names)
        metrics.update(staleness_by_policy(batch, step, names))
        metrics.update(write_transcripts(run.transcripts, batch, step, names))
        for trainer in self.trainers:
            metrics.update(trainer.metrics())
        valid = [g for t in self.trainers for g in t.valid]
        metrics.update(group_reward_metrics(valid))
        if names != [None]:
            rows = [t.metrics() for t in self.trainers]
            metrics.update(sum_policy_metrics(rows, _SUMMED, prefixes=[n for n in names if n is not None]))
        metrics.update(run.retrier.take_metrics())
        epoch = run.train_ds.epoch_of(min(step, len(run.train_ds) - 1))
        metrics.update(
            step_row(
                policy_view(batch, names[0]),
                step,
                epoch=epoch,
                times=times,
                requeued=sampled.requeued,
                stale_dropped=sampled.stale_dropped,
                groups_in_flight=sampled.groups_in_flight,
                runner_restarts=run.take_runner_restarts(),
            )
        )
        assert run.endpoint is not None
        metrics.update(run.endpoint.span_metrics())  # spans the recorder could not store
        return metrics
