"""Reward attribution: reward events + rollout status -> per-transition rewards, or an exclusion.

Contract: a failed, cancelled, timed-out or unfinished rollout, one without a reward, one with an
unusable reward and one that lost a call are excluded and counted (never trained as 0.0, which
would teach the policy that crashing is as good as a wrong answer) unless the caller asks for a
fixed score; a group that loses too many rollouts is dropped rather than centred on what is left.
This module is the one place a rollout's status becomes an exclusion (:func:`final_status`,
:func:`exclusion_for`).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

from agl_tinker.core.reward_mode import RewardMode
from agl_tinker.core.types import RewardEvent

__all__ = [
    "ExclusionReason",
    "FinalStatus",
    "GroupSelection",
    "RewardAttribution",
    "RewardOptions",
    "attribute_rewards",
    "exclusion_for",
    "final_status",
    "select_group",
]


class ExclusionReason(StrEnum):
    NO_REWARD = "no_reward"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    UNFINISHED = "unfinished"
    NO_TRAINABLE_CALLS = "no_trainable_calls"
    BAD_REWARD = "bad_reward"
    """A reward span whose value is missing, not a number, not finite or out of range."""
    GAP = "gap"
    """A call claims a prefix no recorded call produced: a call's span was lost."""


FinalStatus = Literal["succeeded", "failed", "cancelled", "timeout", "unresponsive", "unfinished"]
"""A rollout's status as training judges it: succeeded, or why it did not."""

_UNFINISHED = frozenset({"queuing", "preparing", "running", "requeuing"})
_FINAL_STATUSES: Mapping[str, FinalStatus] = {s: s for s in get_args(FinalStatus)}


def final_status(
    status: str, *, attempt_status: str | None = None, cut_by_deadline: bool = False
) -> FinalStatus:
    """A rollout's store status, refined by why it failed.

    Args:
        status: ``Rollout.status`` (or an already refined status such as ``timeout``).
        attempt_status: the status of its latest attempt, when known (``timeout`` and
            ``unresponsive`` say why a failed rollout failed).
        cut_by_deadline: the training step's deadline ended the rollout before it finished.

    Returns:
        ``succeeded``; ``timeout`` when cut by the deadline or its attempt timed out;
        ``unresponsive``; ``failed``; ``cancelled``; ``unfinished`` for a status that is not terminal;
        any other status reads as ``failed``.
    """
    if status == "succeeded":
        return "succeeded"
    if cut_by_deadline:
        return "timeout"
    if status == "failed" and attempt_status in ("timeout", "unresponsive"):
        status = attempt_status
    if status in _UNFINISHED:
        return "unfinished"
    return _FINAL_STATUSES.get(status, "failed")


_STATUS_EXCLUSION: Mapping[str, ExclusionReason] = {
    "unfinished": ExclusionReason.UNFINISHED,
    "failed": ExclusionReason.FAILED,
    "cancelled": ExclusionReason.CANCELLED,
    "timeout": ExclusionReason.TIMEOUT,
    "unresponsive": ExclusionReason.TIMEOUT,
    "queuing": ExclusionReason.UNFINISHED,
    "preparing": ExclusionReason.UNFINISHED,
    "running": ExclusionReason.UNFINISHED,
    "requeuing": ExclusionReason.UNFINISHED,
}


@dataclass(frozen=True)
class RewardOptions:
    mode: RewardMode = RewardMode.FINAL
    excluded_score: float | None = None
    """``None``: excluded rollouts are not trained. A number: they are trained with this return."""
    min_valid_per_group: int = 1
    """Groups with fewer valid rollouts than this are dropped (GRPO needs at least 2 to learn)."""
    dimension: str | None = None
    """``None``: each reward event counts with its primary value. A name: with that dimension's
    value instead (``emit_reward({"team": 1, "checker": 0.5}, primary_key="team")`` has dimensions
    ``team`` and ``checker``), and events without it are no reward: how one agent of several gets
    its own reward. A malformed event still excludes the rollout (``bad_reward``)."""

    def __post_init__(self) -> None:
        if self.min_valid_per_group < 0:
            raise ValueError(f"min_valid_per_group must be >= 0, got {self.min_valid_per_group}")


@dataclass(slots=True)
class RewardAttribution:
    step_rewards: tuple[float, ...]
    """One reward per transition, in the order of ``step_calls``."""
    episode_return: float
    exclusion: ExclusionReason | None
    """Why the rollout is not valid; with ``scored`` it is still trained at ``excluded_score``."""
    scored: bool
    reward_events: int
    early_rewards: int
    """Per-step rewards emitted before any trainable call (credited to the first transition)."""

    @property
    def trainable(self) -> bool:
        return self.exclusion is None or self.scored


def exclusion_for(
    status: str | None, has_reward: bool, has_steps: bool, *, bad_reward: bool = False, gaps: int = 0
) -> ExclusionReason | None:
    """Why a rollout is not valid, or ``None``.

    Status first (a failed rollout's partial reward is not trusted), then broken data (a
    malformed reward, a lost call), then reward, then calls.

    Args:
        status: a store or :func:`final_status` status; ``None`` when the caller knows it finished.
        has_reward: some reward event was recorded.
        has_steps: some call can be trained.
        bad_reward: a reward event has a problem.
        gaps: lost calls found by alignment.

    Returns:
        The exclusion reason (an unknown status is ``failed``), or ``None`` for a valid rollout.
    """
    if status is not None and status != "succeeded":
        return _STATUS_EXCLUSION.get(status, ExclusionReason.FAILED)
    if bad_reward:
        return ExclusionReason.BAD_REWARD
    if gaps:
        return ExclusionReason.GAP
    if not has_reward:
        return ExclusionReason.NO_REWARD
    if not has_steps:
        return ExclusionReason.NO_TRAINABLE_CALLS
    return None


def attribute_rewards(
    events: Sequence[RewardEvent],
    step_calls: Sequence[int],
    status: str | None,
    options: RewardOptions = RewardOptions(),
    *,
    gaps: int = 0,
) -> RewardAttribution:
    """Per-transition rewards for one rollout.

    ``step_calls``: the LLM call index of each transition (any order). ``status``: the rollout's
    (or attempt's) status; ``None`` means the caller knows it finished. Events must be in emission
    order, as :func:`agl_tinker.core.reconstruct.reconstruct` returns them; one with a ``problem``
    excludes the rollout (``bad_reward``). ``gaps``: lost calls the alignment found, which
    exclude it too (``gap``) unless the caller chose to train around them (pass 0).
    """
    n = len(step_calls)
    if options.dimension is not None:
        events = _dimension_events(events, options.dimension)
    bad_reward = any(event.problem is not None for event in events)
    exclusion = exclusion_for(status, bool(events), n > 0, bad_reward=bad_reward, gaps=gaps)
    if exclusion is not None:
        scored = options.excluded_score is not None
        value = float(options.excluded_score) if options.excluded_score is not None else 0.0
        rewards = [0.0] * n
        if scored and n:
            rewards[_last_step(step_calls)] = value
        return _attribution(rewards, value, exclusion=exclusion, scored=scored, events=len(events), early=0)

    rewards = [0.0] * n
    early = 0
    if options.mode is RewardMode.PER_STEP:
        order = sorted(range(n), key=step_calls.__getitem__)
        calls_sorted = [step_calls[i] for i in order]
        for event in events:
            pos = (
                len(calls_sorted)
                if event.after_call is None
                else bisect.bisect_right(calls_sorted, event.after_call)
            )
            if event.after_call is None or pos == 0:
                early += 1
                pos = 1
            rewards[order[pos - 1]] += event.value
        total = sum(event.value for event in events)
    else:
        total = events[-1].value if options.mode is RewardMode.FINAL else sum(e.value for e in events)
        rewards[_last_step(step_calls)] = total
    return _attribution(rewards, total, exclusion=None, scored=False, events=len(events), early=early)


def _dimension_events(events: Sequence[RewardEvent], dimension: str) -> list[RewardEvent]:
    """The events carrying ``dimension``, valued by it; malformed events stay as they are."""
    out: list[RewardEvent] = []
    for event in events:
        if event.problem is not None:
            out.append(event)
        elif dimension in event.dimensions:
            out.append(dataclasses.replace(event, value=event.dimensions[dimension]))
    return out


def _attribution(
    rewards: list[float],
    total: float,
    *,
    exclusion: ExclusionReason | None,
    scored: bool,
    events: int,
    early: int,
) -> RewardAttribution:
    return RewardAttribution(
        step_rewards=tuple(rewards),
        episode_return=total,
        exclusion=exclusion,
        scored=scored,
        reward_events=events,
        early_rewards=early,
    )


def _last_step(step_calls: Sequence[int]) -> int:
    return list(step_calls).index(max(step_calls))  # the first of equal maxima, as max(key=) gives


@dataclass(frozen=True)
class GroupSelection:
    kept: tuple[int, ...]
    """Indices of the rollouts to train on; empty when the group is dropped."""
    dropped: bool
    valid: int
    scored: int
    excluded: int


def select_group(attributions: Sequence[RewardAttribution | None], min_valid: int) -> GroupSelection:
    """Keep the trainable rollouts of one group, or drop it when fewer than ``min_valid`` are valid.

    ``None`` stands for a rollout that produced nothing at all (counted as excluded). Scored
    exclusions are trained but do not count toward ``min_valid``: a group of crashes is no signal.
    """
    valid = [i for i, a in enumerate(attributions) if a is not None and a.exclusion is None]
    scored = [i for i, a in enumerate(attributions) if a is not None and a.exclusion is not None and a.scored]
    excluded = len(attributions) - len(valid) - len(scored)
    if len(valid) < max(min_valid, 1):
        return GroupSelection(kept=(), dropped=True, valid=len(valid), scored=len(scored), excluded=excluded)
    kept = tuple(sorted(valid + scored))
    return GroupSelection(kept=kept, dropped=False, valid=len(valid), scored=len(scored), excluded=excluded)
