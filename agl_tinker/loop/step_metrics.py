"""A training step's metrics row, one way for every schedule (sync, stream, async).

Rollout counters come from :func:`~agl_tinker.loop.batch_metrics.batch_metrics`; this adds what
the schedule measured (:class:`StepTimes`), the staleness of what was trained
(:func:`staleness_metrics`), and the dispatch figures, so a row of any mode carries the same keys and curves of two modes compare.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agl_tinker.core.trajectory import RolloutTrajectory
from agl_tinker.dispatch.types import BatchResult, RolloutOutcome
from agl_tinker.runners.supervise import RESTARTS

__all__ = ["StepTimes", "call_staleness", "staleness_metrics", "step_row", "sum_policy_metrics"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepTimes:
    """Where a step's wall time went, in seconds.

    Attributes:
        step_s: from the previous step's end (or this step's start) to this step's end: the
            previous step's checkpoint and this step's evaluation included.
        sampling_s: from the schedule starting the step's sampling (after the evaluation) until
            the step's last group was collected: the cookbook's ``time/sampling`` span.
        waiting_s: of that, waiting for rollouts to finish.
        processing_s: reading finished rollouts and rebuilding their trajectories.
        training_s: from the last group collected to the optimiser's last step done.
        swap_s: saving the new weights and swapping them into the endpoint.
        trainer_busy_s: time the training client had work queued (forward/backward, optimiser,
            saves) during the step, overlapping sampling or not.
        sampler_idle_s: time no rollout of the run was unfinished in the store.
    """

    step_s: float
    sampling_s: float
    waiting_s: float
    processing_s: float
    training_s: float
    swap_s: float
    trainer_busy_s: float
    sampler_idle_s: float


def call_staleness(outcomes: Iterable[RolloutOutcome[RolloutTrajectory]], step: int) -> list[int]:
    """Per call of ``outcomes``: how many weights versions it is behind ``step``."""
    out: list[int] = []
    for outcome in outcomes:
        for call in outcome.result.reconstruction.calls:
            if call.weights_version is None:
                continue
            try:
                out.append(step - int(call.weights_version))
            except ValueError:
                logger.warning("call with a non-integer weights version %r", call.weights_version)
    return out


def staleness_metrics(
    groups: Iterable[Iterable[RolloutOutcome[RolloutTrajectory]]], step: int, prefix: str = ""
) -> dict[str, float]:
    """``staleness/{call,group}_{mean,max}`` (after ``prefix``) of ``groups`` (each group's
    outcomes): how many weights versions the calls are behind ``step``; a group is as stale as its
    oldest call."""
    per_group = [call_staleness(outcomes, step) for outcomes in groups]
    calls = [s for group in per_group for s in group]
    group_staleness = [max(group, default=0) for group in per_group]
    return {
        f"{prefix}staleness/call_mean": _mean(calls),
        f"{prefix}staleness/call_max": max(calls, default=0),
        f"{prefix}staleness/group_mean": _mean(group_staleness),
        f"{prefix}staleness/group_max": max(group_staleness, default=0),
    }


def step_row(
    batch: BatchResult[RolloutTrajectory],
    step: int,
    *,
    epoch: int,
    times: StepTimes,
    requeued: int = 0,
    stale_dropped: int = 0,
    groups_in_flight: int = 0,
    runner_restarts: int,
) -> dict[str, Any]:
    """The schedule's part of a step's row: progress, dispatch and time figures (the staleness of
    each policy's calls: :func:`staleness_metrics`, by policy in ``policy_metrics``).

    Args:
        batch: the step's trained-or-excluded groups (stale ones left out).
        step: the step (the weights version the groups are judged against).
        epoch: the dataset epoch of the step.
        times: what the schedule measured.
        requeued, stale_dropped: groups found stale this step (async only; 0 otherwise).
        groups_in_flight: groups still running when the step started training.
        runner_restarts: runners (processes or Ray actors) that died and were replaced during
            the step; 0 where the run does not start its runners (split mode).
    """
    stats = batch.stats
    wall = max(times.step_s, 1e-9)
    return {
        "progress/step": step,
        "progress/epoch": epoch,
        "rollouts/timeout": sum(1 for o in batch.outcomes if o.final_status == "timeout"),
        "rollouts/skipped": stats.n_skipped,
        "dispatch/overhead_ms_p50": stats.overhead_ms(0.5),
        "dispatch/detect_ms_p50": stats.detect_ms(0.5),
        "async/stale_requeued": requeued,
        "async/stale_dropped": stale_dropped,
        "async/groups_in_flight": groups_in_flight,
        RESTARTS: runner_restarts,
        "time/step_s": times.step_s,
        "time/sampling_s": times.sampling_s,
        "time/waiting_s": times.waiting_s,
        "time/processing_s": times.processing_s,
        "time/training_s": times.training_s,
        "time/swap_s": times.swap_s,
        "time/trainer_busy_s": times.trainer_busy_s,
        "time/trainer_idle_frac": max(0.0, 1.0 - times.trainer_busy_s / wall),
        "time/sampler_idle_frac": min(1.0, times.sampler_idle_s / wall),
    }


def sum_policy_metrics(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], *, prefixes: Iterable[str]
) -> dict[str, Any]:
    """Top-level ``keys`` of a several-policy step: the sum over its policies' rows (each row's
    keys under ``policy/<name>/`` for the names in ``prefixes``)."""
    names = [f"policy/{name}/" for name in prefixes]
    return {k: sum(row.get(p + k, 0) or 0 for row in rows for p in names) for k in keys}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
