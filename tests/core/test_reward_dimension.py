"""Per-agent rewards: ``RewardOptions.dimension`` values each event by one named dimension."""

from __future__ import annotations

from agl_tinker.core.reward_mode import RewardMode
from agl_tinker.core.rewards import ExclusionReason, RewardOptions, attribute_rewards
from agl_tinker.core.types import RewardEvent, RewardProblem


def ev(value: float, after: int | None, problem: RewardProblem | None = None, **dims: float) -> RewardEvent:
    return RewardEvent(
        value=value,
        time=None,
        sequence_id=0,
        span_id="s",
        after_call=after,
        dimensions={"team": value, **dims},
        problem=problem,
    )


def test_a_dimension_replaces_the_primary_value() -> None:
    events = [ev(0.0, 1, speaker=1.0, checker=-1.0)]
    assert attribute_rewards(events, [0, 1], "succeeded").episode_return == 0.0
    speaker = attribute_rewards(events, [0, 1], "succeeded", RewardOptions(dimension="speaker"))
    checker = attribute_rewards(events, [0, 1], "succeeded", RewardOptions(dimension="checker"))
    assert speaker.step_rewards == (0.0, 1.0) and checker.step_rewards == (0.0, -1.0)


def test_events_without_the_dimension_are_no_reward() -> None:
    events = [ev(0.5, 0, speaker=1.0), ev(0.25, 1)]
    summed = attribute_rewards(
        events, [0, 1], "succeeded", RewardOptions(mode=RewardMode.SUM, dimension="speaker")
    )
    assert summed.episode_return == 1.0
    none = attribute_rewards(events, [0, 1], "succeeded", RewardOptions(dimension="checker"))
    assert none.exclusion is ExclusionReason.NO_REWARD and not none.trainable


def test_a_malformed_event_still_excludes_the_rollout() -> None:
    events = [ev(float("nan"), 0, RewardProblem.NOT_FINITE), ev(1.0, 1, checker=1.0)]
    a = attribute_rewards(events, [0, 1], "succeeded", RewardOptions(dimension="checker"))
    assert a.exclusion is ExclusionReason.BAD_REWARD
