"""A flat reward gives a signal: one line when ``n`` steps in a row had nothing to learn from.

A step has nothing to learn from when every group scored the same (advantages are centred within a
group, so a constant group teaches nothing) or when no datum was trained. After ``n`` such steps
(default 3) the run says so once. What it says depends on how the run got there:

- the reward never rose to where it sits (flat from the start, or fallen): a warning with the likely
  causes (the agent never produces a rewarded answer, or always fails) and where to look;
- the reward rose to where it sits (Hello 1024 at +1.000 after ten steps): a note that the tasks
  look learnt, not a warning; telling a user whose run has just succeeded that the agent "may never
  produce a rewarded answer" sends them looking for a fault that is not there.

Only this run's steps count (a resumed run knows none before its first step), so a resume that
starts on the plateau gets the warning; it names the reward, which tells the two apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FLAT_WARNING", "LEARNT_NOTE", "FlatRewardWatch", "group_reward_metrics"]

FLAT_WARNING = (
    "warning: steps {first}-{last} had nothing to learn from (every group scored the same{reward}, or no "
    "datum trained): the agent may never produce a rewarded answer, or always fail. Look at a few answers "
    "(`agl-tinker dryrun MODULE:FUNCTION tasks=FILE` prints each rollout of your agent) and see the "
    "README's 'What the offline simulator can and cannot learn'"
)
LEARNT_NOTE = (
    "note: steps {first}-{last} had nothing left to learn from: every group scored the same{reward}, up "
    "from {lowest:+.3f} at step {lowest_step}; the tasks look learnt, and more steps will not change the "
    "policy on them"
)


def group_reward_metrics(groups: Sequence[Any]) -> dict[str, int]:
    """``groups/valid`` and ``groups/constant`` (groups whose every trajectory has the same total
    reward) of a step's valid cookbook ``TrajectoryGroup``\\ s."""
    constant = sum(1 for g in groups if len(set(g.get_total_rewards())) <= 1)
    return {"groups/valid": len(groups), "groups/constant": constant}


def _reward(metrics: Mapping[str, Any]) -> float | None:
    value = metrics.get("reward/mean")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class FlatRewardWatch:
    """Fed each step's metrics; returns one line once, at the ``n``-th flat step in a row: the
    warning, or the learnt note when the reward rose to the flat stretch's level earlier in the run."""

    def __init__(self, n: int = 3) -> None:
        self.n = n
        self.flat_since: int | None = None
        self.warned = False
        self.lowest: tuple[float, int] | None = None
        """The lowest ``reward/mean`` of the steps seen before the current flat stretch, and its step."""
        self._lowest_so_far: tuple[float, int] | None = None

    @staticmethod
    def is_flat(metrics: Mapping[str, Any]) -> bool:
        if metrics.get("train/datums") == 0:
            return True
        valid, constant = metrics.get("groups/valid"), metrics.get("groups/constant")
        return isinstance(valid, int) and valid > 0 and constant == valid

    def see(self, step: int, metrics: Mapping[str, Any]) -> str | None:
        line = self._see(step, metrics)
        reward = _reward(metrics)
        if reward is not None and (self._lowest_so_far is None or reward < self._lowest_so_far[0]):
            self._lowest_so_far = (reward, step)
        return line

    def _see(self, step: int, metrics: Mapping[str, Any]) -> str | None:
        if self.n <= 0 or self.warned:
            return None
        if not self.is_flat(metrics):
            self.flat_since = None
            return None
        if self.flat_since is None:
            self.flat_since = step
            self.lowest = self._lowest_so_far
        if step - self.flat_since + 1 < self.n:
            return None
        self.warned = True
        reward = _reward(metrics)
        shown = "" if reward is None else f", reward {reward:+.3f}"
        if reward is not None and self.lowest is not None and self.lowest[0] < reward:
            lowest, lowest_step = self.lowest
            return LEARNT_NOTE.format(
                first=self.flat_since, last=step, reward=shown, lowest=lowest, lowest_step=lowest_step
            )
        return FLAT_WARNING.format(first=self.flat_since, last=step, reward=shown)
