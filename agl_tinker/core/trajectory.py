"""One rollout, end to end, and one group: the core pipeline's one orchestrator.

``rollout_trajectory``: spans -> :func:`~agl_tinker.core.reconstruct.reconstruct` ->
:func:`~agl_tinker.core.align.align_calls` -> :func:`~agl_tinker.core.rewards.attribute_rewards`
-> a cookbook ``Trajectory`` (or the reason the rollout is excluded). ``trajectory_group``: the
rollouts of one task -> a cookbook ``TrajectoryGroup`` (or ``None`` when the group is dropped) and
a :class:`GroupReport`, the counts the training loop logs.

The trajectory's transitions are grouped by sequence, so
``tinker_cookbook.rl.data_processing.trajectory_to_data`` merges each sequence into exactly one
datum and the rollout's return (hence its group advantage) stays one number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tinker
from tinker_cookbook.completers import TokensWithLogprobs
from tinker_cookbook.rl.types import Logs, Trajectory, TrajectoryGroup, Transition

from agl_tinker.core.align import align_calls
from agl_tinker.core.drift import Decode
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.core.rewards import (
    ExclusionReason,
    GroupSelection,
    RewardAttribution,
    RewardOptions,
    attribute_rewards,
    select_group,
)
from agl_tinker.core.steps import AlignedStep, Alignment, AlignOptions
from agl_tinker.core.types import Reconstruction, ReconstructOptions

__all__ = [
    "SAMPLED_SEQUENCE_ID_LOG",
    "GroupReport",
    "RolloutTrajectory",
    "alignment_trajectory",
    "exclusion_counts",
    "problem_metrics",
    "rollout_trajectory",
    "trajectory_group",
]

_EMPTY = tinker.ModelInput(chunks=[])  # frozen: safe to share


def alignment_trajectory(alignment: Alignment, step_rewards: Sequence[float] | None = None) -> Trajectory:
    """The cookbook ``Trajectory`` of an alignment's steps; ``episode_done`` marks the last one.

    Args:
        alignment: one rollout's aligned steps.
        step_rewards: one reward per step, in step order (``None``: all 0.0).

    Returns:
        The trajectory; each transition's ``logs`` name its call and sequence.

    Raises:
        ValueError: ``step_rewards`` has not one reward per step.
    """
    steps = alignment.steps
    rewards = step_rewards if step_rewards is not None else [0.0] * len(steps)
    if len(rewards) != len(steps):
        raise ValueError(f"{len(rewards)} rewards for {len(steps)} steps")
    last = len(steps) - 1
    transitions = [
        Transition(
            ob=step.ob,
            ac=step.ac,
            reward=float(reward),
            episode_done=i == last,
            logs=_step_logs(step),
        )
        for i, (step, reward) in enumerate(zip(steps, rewards, strict=True))
    ]
    return Trajectory(transitions=transitions, final_ob=_EMPTY)


SAMPLED_SEQUENCE_ID_LOG = "sampled_sequence_id"
"""``Transition.logs`` key of the step's recorded ``sequence_id`` (present only when recorded)."""


def _step_logs(step: AlignedStep) -> Logs:
    logs: Logs = {"call_index": step.call_index, "sequence_index": step.sequence_index}
    if step.sampled_sequence_id is not None:
        logs[SAMPLED_SEQUENCE_ID_LOG] = step.sampled_sequence_id
    return logs


@dataclass(slots=True)
class RolloutTrajectory:
    """Everything the training loop needs from one rollout, and everything it should log."""

    rollout_id: str | None
    trajectory: Trajectory | None
    """``None`` when the rollout is excluded (and not scored)."""
    exclusion: ExclusionReason | None
    reconstruction: Reconstruction
    alignment: Alignment
    attribution: RewardAttribution
    unrecorded_calls: int = 0
    """Calls the endpoint served this attempt beyond the calls its spans hold (``served_calls``
    of :func:`rollout_trajectory`): their spans never reached the store."""

    @property
    def lost_calls(self) -> int:
        """Lost calls, as many as the evidence shows: the alignment's gaps (a later call claims
        tokens no recorded call produced) or the endpoint's count of calls not recorded, the larger."""
        return max(len(self.alignment.gaps), self.unrecorded_calls)

    @property
    def metrics(self) -> dict[str, float]:
        """Flat counters for logging (built on demand: most rollouts are never logged one by one)."""
        out: dict[str, float] = {f"reconstruct/{k}": v for k, v in self.reconstruction.metrics.items()}
        out.update({f"align/{k}": v for k, v in self.alignment.metrics.items()})
        out["reward/events"] = self.attribution.reward_events
        out["reward/return"] = self.attribution.episode_return
        return out


def problem_metrics(rollouts: Iterable[RolloutTrajectory], prefix: str = "") -> dict[str, int]:
    """A step's counts of what the core refused or found wrong, summed over its rollouts.

    Args:
        rollouts: the step's rollouts.
        prefix: prepended to every key (``eval/`` for evaluation steps).

    Returns:
        ``calls/problem/<reason>`` (calls not trained), ``rewards/problem/<reason>`` (reward spans
        that excluded their rollout), ``align/gaps`` (lost calls, :attr:`RolloutTrajectory.lost_calls`) and ``tool_calls/parse_failures``
        (tool calls the policy wrote that did not parse; the agent got them as text).
    """
    out: dict[str, int] = {f"{prefix}align/gaps": 0, f"{prefix}tool_calls/parse_failures": 0}
    for r in rollouts:
        for key, value in r.reconstruction.metrics.items():
            if key.startswith("problem/"):
                name = f"{prefix}calls/{key}"
            elif key.startswith("reward_problem/"):
                name = f"{prefix}rewards/problem/{key[len('reward_problem/') :]}"
            elif key == "tool_call_parse_failures":
                name = f"{prefix}tool_calls/parse_failures"
            else:
                continue
            out[name] = out.get(name, 0) + value
        out[f"{prefix}align/gaps"] += r.lost_calls
    return out


def rollout_trajectory(
    spans: Iterable[Any],
    *,
    status: str | None,
    decode: Decode | None = None,
    reconstruct_options: ReconstructOptions | None = None,
    align_options: AlignOptions | None = None,
    reward_options: RewardOptions | None = None,
    served_calls: int | None = None,
) -> RolloutTrajectory:
    """Spans of one rollout -> its cookbook ``Trajectory`` (or why it is excluded).

    Args:
        spans: the rollout's spans, in any order, duplicates allowed.
        status: the rollout's status (:func:`agl_tinker.core.rewards.final_status` of it);
            ``None`` when the caller already knows it finished.
        decode: the tokenizer's decode, for drift reports.
        reconstruct_options: defaults to ``ReconstructOptions()``.
        align_options: defaults to ``AlignOptions()``.
        reward_options: defaults to ``RewardOptions()``.
        served_calls: LLM calls the endpoint served this attempt, when known (``None``: unknown).
            Spans holding fewer calls (kept and filtered) lost the rest: a lost *last* call is seen
            only this way (no later call claims its tokens). Lost calls are gaps: they exclude the
            rollout (``gap``) unless ``align_options.on_gap`` is ``train``.

    Returns:
        The trajectory with every intermediate result (for logging).

    Raises:
        ValueError: ``served_calls`` is negative.
    """
    if served_calls is not None and served_calls < 0:
        raise ValueError(f"served_calls must be >= 0 or None, got {served_calls}")
    rec = reconstruct(spans, reconstruct_options or ReconstructOptions())
    align_options = align_options or AlignOptions()
    alignment = align_calls(rec.calls, decode=decode, options=align_options, other_ends=rec.filtered_ends)
    recorded = len(rec.calls) + rec.metrics.get("filtered_calls", 0)
    unrecorded = 0 if served_calls is None else max(0, served_calls - recorded)
    lost = max(len(alignment.gaps), unrecorded)
    gaps = lost if align_options.on_gap == "exclude" else 0
    attribution = attribute_rewards(
        rec.rewards, alignment.step_calls, status, reward_options or RewardOptions(), gaps=gaps
    )
    trajectory: Trajectory | None = None
    if attribution.trainable:
        if alignment.steps:
            trajectory = alignment_trajectory(alignment, attribution.step_rewards)
        else:
            # A scored rollout with nothing to train still counts in its group's mean: the
            # cookbook's own convention is one empty transition carrying the reward.
            transition = Transition(
                ob=_EMPTY,
                ac=TokensWithLogprobs(tokens=[], maybe_logprobs=[]),
                reward=attribution.episode_return,
                episode_done=True,
            )
            trajectory = Trajectory(transitions=[transition], final_ob=_EMPTY)
    return RolloutTrajectory(
        rollout_id=rec.rollout_id,
        trajectory=trajectory,
        exclusion=attribution.exclusion,
        reconstruction=rec,
        alignment=alignment,
        attribution=attribution,
        unrecorded_calls=unrecorded,
    )


def exclusion_counts(rollouts: Iterable[RolloutTrajectory | None]) -> dict[str, int]:
    """How many rollouts were excluded, by reason; ``None`` entries (no spans) count as ``no_spans``.

    Args:
        rollouts: any rollouts (a group, or a whole step's).

    Returns:
        Reason -> count, only for reasons that occurred, in order of first occurrence.
    """
    counts: dict[str, int] = {}
    for r in rollouts:
        reason = "no_spans" if r is None else (str(r.exclusion) if r.exclusion is not None else None)
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


@dataclass(frozen=True)
class GroupReport:
    """What happened to one group: which rollouts were kept, and why the others were excluded."""

    selection: GroupSelection
    exclusions: Mapping[str, int]
    """Reason -> count, as :func:`exclusion_counts` gives it."""


def trajectory_group(
    rollouts: Sequence[RolloutTrajectory | None], *, min_valid: int | None = None
) -> tuple[TrajectoryGroup | None, GroupReport]:
    """A cookbook ``TrajectoryGroup`` from the rollouts of one task, or ``None`` if it is dropped.

    Args:
        rollouts: the task's rollouts; ``None`` entries produced no spans at all (excluded).
        min_valid: fewest valid rollouts to keep the group; defaults to
            ``RewardOptions().min_valid_per_group``.

    Returns:
        The group (``None`` when dropped) and its report.
    """
    attributions = [r.attribution if r is not None else None for r in rollouts]
    if min_valid is None:
        min_valid = RewardOptions().min_valid_per_group
    selection = select_group(attributions, min_valid)
    report = GroupReport(selection=selection, exclusions=exclusion_counts(rollouts))
    if selection.dropped:
        return None, report
    trajectories = []
    for i in selection.kept:
        r = rollouts[i]
        assert r is not None and r.trajectory is not None
        trajectories.append(r.trajectory)
    group = TrajectoryGroup(
        trajectories_G=trajectories,
        final_rewards_G=[0.0] * len(trajectories),
        metrics_G=[{} for _ in trajectories],
    )
    return group, report
