"""A batch's rollouts as training judges them: final status, per-group trajectories, step metrics.

Shared by the synchronous, asynchronous and several-policy loops, so each metric is counted one way.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from agl_tinker.core.rewards import final_status
from agl_tinker.core.tool_health import tool_health_metrics
from agl_tinker.core.trajectory import RolloutTrajectory, exclusion_counts, problem_metrics
from agl_tinker.dispatch.types import DEADLINE_METADATA_KEY, SERVED_CALLS_METADATA_KEY, BatchResult

__all__ = ["batch_metrics", "rollout_status", "served_calls"]


def rollout_status(rollout: Any) -> str:
    """The rollout's status as the core judges it (:func:`agl_tinker.core.rewards.final_status`)."""
    attempt = getattr(rollout, "attempt", None)
    return final_status(
        str(rollout.status),
        attempt_status=attempt.status if attempt is not None else None,
        cut_by_deadline=bool((rollout.metadata or {}).get(DEADLINE_METADATA_KEY)),
    )


def served_calls(rollout: Any) -> int | None:
    """Calls the endpoint served the rollout's attempt, as the reader noted them (``None``: unknown)."""
    served = (rollout.metadata or {}).get(SERVED_CALLS_METADATA_KEY)
    return served if type(served) is int else None


def batch_metrics(
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
