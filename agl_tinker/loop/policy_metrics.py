"""A batch's rollout counters and transcripts over a run's policies, for training steps and evaluations.

A run's only policy (named ``None``) logs :func:`~agl_tinker.loop.batch_metrics.batch_metrics`
and :func:`~agl_tinker.loop.step_metrics.staleness_metrics` unprefixed. Several policies log each
policy's counters and staleness under ``policy/<name>/``, the rollout counters (the same for every
policy) once at the top level, the mean of the policies' mean rewards as ``reward/mean``, the
staleness of every policy's calls together as ``staleness/*`` and the calls no policy owns as
``calls/unowned``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agl_tinker.dispatch.types import BatchResult
from agl_tinker.loop.batch_metrics import batch_metrics
from agl_tinker.loop.policy import PolicyResults, outcome_view, policy_view, unowned_calls
from agl_tinker.loop.step_metrics import staleness_metrics
from agl_tinker.viewer.writer import TranscriptWriter

__all__ = ["rollout_metrics", "staleness_by_policy", "write_transcripts"]


def rollout_metrics(
    batch: BatchResult[PolicyResults], step: int, names: Sequence[str | None], prefix: str = ""
) -> dict[str, Any]:
    """The batch's rollout counters for policies ``names`` (``[None]``: a run's only policy)."""
    if list(names) == [None]:
        return batch_metrics(policy_view(batch, None), step, prefix=prefix)[1]
    metrics: dict[str, Any] = {}
    means: list[float] = []
    for name in names:
        _, policy_metrics = batch_metrics(policy_view(batch, name), step, prefix=f"{prefix}policy/{name}/")
        metrics.update(policy_metrics)
        mean = policy_metrics.get(f"{prefix}policy/{name}/reward/mean")
        if mean is not None:
            means.append(mean)
    _, first_metrics = batch_metrics(policy_view(batch, names[0]), step, prefix=prefix)
    metrics.update({k: v for k, v in first_metrics.items() if k.startswith(f"{prefix}rollouts/")})
    metrics[f"{prefix}reward/mean"] = sum(means) / len(means) if means else None
    metrics[f"{prefix}calls/unowned"] = sum(unowned_calls(o.result) for o in batch.outcomes)
    return metrics


def staleness_by_policy(
    batch: BatchResult[PolicyResults], step: int, names: Sequence[str | None]
) -> dict[str, float]:
    """``staleness/*`` of the calls each policy trains on, against ``step``: unprefixed for a run's
    only policy; for several, each policy's under ``policy/<name>/`` and all policies' calls
    together at the top level (a group as stale as its oldest call of any policy)."""
    if list(names) == [None]:
        return staleness_metrics((g.outcomes for g in policy_view(batch, None).groups), step)
    metrics: dict[str, float] = {}
    for name in names:
        groups = (g.outcomes for g in policy_view(batch, name).groups)
        metrics.update(staleness_metrics(groups, step, prefix=f"policy/{name}/"))
    together = ([outcome_view(o, name) for name in names for o in g.outcomes] for g in batch.groups)
    metrics.update(staleness_metrics(together, step))
    return metrics


def write_transcripts(
    writer: TranscriptWriter,
    batch: BatchResult[PolicyResults],
    step: int,
    names: Sequence[str | None],
    kind: str = "step",
) -> dict[str, Any]:
    """Write each policy's transcripts of the batch (one file per policy); what the writer reports.

    The writer's keys (``transcripts/*``, ``time/transcripts_s``; ``eval/...`` for ``kind="eval"``)
    go under ``policy/<name>/`` (after ``eval/``) for a policy of several."""
    out: dict[str, Any] = {}
    lead = "eval/" if kind == "eval" else ""
    for name in names:
        written = writer.write(step, policy_view(batch, name).groups, policy=name, kind=kind)
        if name is None:
            out.update(written)
        else:
            out.update({f"{lead}policy/{name}/{k[len(lead) :]}": v for k, v in written.items()})
    return out
