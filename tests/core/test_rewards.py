"""Reward attribution: modes, exclusions, groups."""

from __future__ import annotations

import pytest

from agl_tinker.core.reward_mode import RewardMode
from agl_tinker.core.rewards import ExclusionReason, RewardOptions, attribute_rewards, select_group
from agl_tinker.core.types import RewardEvent


def ev(value: float, after: int | None) -> RewardEvent:
    return RewardEvent(value=value, time=None, sequence_id=0, span_id="s", after_call=after)


EVENTS = [ev(0.5, None), ev(1.0, 1), ev(-0.25, 3)]
STEPS = [0, 2, 3, 5]  # call index of each transition; call 1 and 4 were not trainable


def test_final_credits_the_last_reward_to_the_last_transition() -> None:
    a = attribute_rewards(EVENTS, STEPS, "succeeded")
    assert a.step_rewards == (0.0, 0.0, 0.0, -0.25) and a.episode_return == -0.25 and a.trainable


def test_sum_credits_the_total_to_the_last_transition() -> None:
    a = attribute_rewards(EVENTS, STEPS, "succeeded", RewardOptions(mode=RewardMode.SUM))
    assert a.step_rewards == (0.0, 0.0, 0.0, 1.25)


def test_per_step_credits_each_reward_to_the_call_before_it() -> None:
    a = attribute_rewards(EVENTS, STEPS, None, RewardOptions(mode=RewardMode.PER_STEP))
    # 0.5 came before any call -> first transition; 1.0 after call 1 (untrainable) -> call 0;
    # -0.25 after call 3 -> call 3.
    assert a.step_rewards == (1.5, 0.0, -0.25, 0.0) and a.early_rewards == 1
    assert sum(a.step_rewards) == a.episode_return == 1.25


def test_per_step_follows_call_order_not_transition_order() -> None:
    a = attribute_rewards([ev(1.0, 2)], [0, 3, 2], None, RewardOptions(mode=RewardMode.PER_STEP))
    assert a.step_rewards == (0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("status", "events", "steps", "reason"),
    [
        ("failed", EVENTS, STEPS, ExclusionReason.FAILED),
        ("cancelled", EVENTS, STEPS, ExclusionReason.CANCELLED),
        ("timeout", EVENTS, STEPS, ExclusionReason.TIMEOUT),
        ("running", EVENTS, STEPS, ExclusionReason.UNFINISHED),
        ("succeeded", [], STEPS, ExclusionReason.NO_REWARD),
        ("succeeded", EVENTS, [], ExclusionReason.NO_TRAINABLE_CALLS),
    ],
)
def test_exclusions(
    status: str, events: list[RewardEvent], steps: list[int], reason: ExclusionReason
) -> None:
    a = attribute_rewards(events, steps, status)
    assert a.exclusion is reason and not a.trainable and not any(a.step_rewards)
    scored = attribute_rewards(events, steps, status, RewardOptions(excluded_score=-1.0))
    assert scored.trainable and scored.exclusion is reason and scored.episode_return == -1.0
    assert sum(scored.step_rewards) == (-1.0 if steps else 0.0)


def test_group_selection_drops_groups_with_too_few_valid_rollouts() -> None:
    ok = attribute_rewards(EVENTS, STEPS, "succeeded")
    bad = attribute_rewards(EVENTS, STEPS, "failed")
    scored = attribute_rewards(EVENTS, STEPS, "failed", RewardOptions(excluded_score=0.0))
    keep = select_group([ok, bad, ok, scored, None], min_valid=2)
    assert (
        keep.kept == (0, 2, 3) and not keep.dropped and (keep.valid, keep.scored, keep.excluded) == (2, 1, 2)
    )
    drop = select_group([ok, bad, scored], min_valid=2)
    assert drop.dropped and drop.kept == ()
    assert select_group([], min_valid=0).dropped


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="min_valid_per_group"):
        RewardOptions(min_valid_per_group=-1)


def test_final_reward_goes_to_the_latest_call_in_any_step_order() -> None:
    from agl_tinker.core.rewards import _last_step

    assert _last_step([2, 7, 1, 3]) == 1 and _last_step((5,)) == 0
    assert _last_step([2, 7, 1, 7]) == 1  # ties (not produced by align): the first, as before


@pytest.mark.parametrize(
    ("status", "attempt", "cut", "final", "exclusion"),
    [
        ("succeeded", None, False, "succeeded", None),
        ("succeeded", None, True, "succeeded", None),  # finished before the deadline cut it
        ("failed", None, False, "failed", ExclusionReason.FAILED),
        ("failed", "timeout", False, "timeout", ExclusionReason.TIMEOUT),
        ("failed", "unresponsive", False, "unresponsive", ExclusionReason.TIMEOUT),
        ("failed", "failed", True, "timeout", ExclusionReason.TIMEOUT),
        ("cancelled", None, False, "cancelled", ExclusionReason.CANCELLED),
        ("running", "running", False, "unfinished", ExclusionReason.UNFINISHED),
        ("queuing", None, False, "unfinished", ExclusionReason.UNFINISHED),
        ("timeout", None, False, "timeout", ExclusionReason.TIMEOUT),
        ("something-new", None, False, "failed", ExclusionReason.FAILED),
    ],
)
def test_final_status_and_its_exclusion(
    status: str, attempt: str | None, cut: bool, final: str, exclusion: ExclusionReason | None
) -> None:
    from agl_tinker.core.rewards import exclusion_for, final_status

    assert final_status(status, attempt_status=attempt, cut_by_deadline=cut) == final
    assert exclusion_for(final, has_reward=True, has_steps=True) is exclusion
    assert exclusion_for(status if not cut and attempt is None else final, True, True) is exclusion
