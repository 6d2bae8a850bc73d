"""A flat reward gives a signal: one warning when ``n`` steps in a row had nothing to learn from.

A step has nothing to learn from when every group scored the same (advantages are centred within a
group, so a constant group teaches nothing) or when no datum was trained. After ``n`` such steps
(default 3) the run says so once, with the likely causes and where to look.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FLAT_WARNING", "FlatRewardWatch", "group_reward_metrics"]

FLAT_WARNING = (
    "warning: steps {first}-{last} had nothing to learn from (every group scored the same, or no datum "
    "trained): the agent may never produce a rewarded answer, or always fail. Look at a few answers "
    "(`agl-tinker dryrun MODULE:FUNCTION tasks=FILE` prints each rollout of your agent) and see the "
    "README's 'What the offline simulator can and cannot learn'"
)


def group_reward_metrics(groups: Sequence[Any]) -> dict[str, int]:
    """``groups/valid`` and ``groups/constant`` (groups whose every trajectory has the same total
    reward) of a step's valid cookbook ``TrajectoryGroup``\\ s."""
    constant = sum(1 for g in groups if len(set(g.get_total_rewards())) <= 1)
    return {"groups/valid": len(groups), "groups/constant": constant}


class FlatRewardWatch:
    """Fed each step's metrics; returns the warning once, at the ``n``-th flat step in a row."""

    def __init__(self, n: int = 3) -> None:
        self.n = n
        self.flat_since: int | None = None
        self.warned = False

    @staticmethod
    def is_flat(metrics: Mapping[str, Any]) -> bool:
        if metrics.get("train/datums") == 0:
            return True
        valid, constant = metrics.get("groups/valid"), metrics.get("groups/constant")
        return isinstance(valid, int) and valid > 0 and constant == valid

    def see(self, step: int, metrics: Mapping[str, Any]) -> str | None:
        if self.n <= 0 or self.warned:
            return None
        if not self.is_flat(metrics):
            self.flat_since = None
            return None
        if self.flat_since is None:
            self.flat_since = step
        if step - self.flat_since + 1 < self.n:
            return None
        self.warned = True
        return FLAT_WARNING.format(first=self.flat_since, last=step)
