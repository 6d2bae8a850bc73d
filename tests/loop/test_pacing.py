"""Pacing (``sampling_steps_ahead``): the pacer's rules as properties over any completion order, and
the config that turns it on."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tinker_cookbook.rl.train import AsyncConfig

from agl_tinker.dispatch.continuous import FinishedGroup, GroupRequest
from agl_tinker.loop.config import ConfigError, TrainConfig
from agl_tinker.loop.pacing import Pacer


def _stream(n: int) -> list[GroupRequest]:
    return [GroupRequest(key, {"i": key}) for key in range(n)]


def _finished(request: GroupRequest) -> FinishedGroup[None]:
    return FinishedGroup(request, (), 0.0, 0.0)


def _simulate(n_groups: int, batch: int, ahead: int, seed: int) -> list[list[tuple[int, int]]]:
    """Run the pacer as the async schedule does, groups finishing in a random order; per step, the
    ``(key, steps trained when it was released)`` of each group it took."""
    rng = random.Random(seed)
    pacer: Pacer[None] = Pacer(_stream(n_groups), batch, ahead)
    released_at: dict[int, int] = {}
    running: list[GroupRequest] = []

    def release() -> None:
        for group in pacer.release():
            released_at[group.key] = pacer.steps_trained
            running.append(group)

    release()
    steps: list[list[tuple[int, int]]] = []
    while pacer.outstanding or pacer.unreleased:
        taken: list[tuple[int, int]] = []
        while len(taken) < batch:
            assert pacer.due_outstanding() <= batch - len(taken)  # the due groups always fit
            picked = pacer.take_next(batch - len(taken))
            if picked is not None:
                taken.append((picked.request.key, released_at[picked.request.key]))
                continue
            if not pacer.outstanding:
                break
            assert running, "the pacer waits for a group that is not running"
            pacer.hold(_finished(running.pop(rng.randrange(len(running)))))  # any may finish next
        steps.append(taken)
        pacer.step_trained()
        release()
    return steps


@settings(max_examples=100, deadline=None)
@given(
    n_groups=st.integers(0, 40),
    batch=st.integers(1, 8),
    ahead=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_every_group_is_trained_once_within_its_bound_whatever_the_completion_order(
    n_groups: int, batch: int, ahead: int, seed: int
) -> None:
    steps = _simulate(n_groups, batch, ahead, seed)
    keys = [key for step in steps for key, _ in step]
    assert sorted(keys) == list(range(n_groups))  # none lost, none twice, none dropped
    for index, step in enumerate(steps):
        assert len(step) == batch or index == len(steps) - 1  # full steps; the last may be short
        for key, released in step:
            assert index - released <= ahead, (key, index, released)  # never staler than the bound


def test_release_runs_ahead_by_the_given_steps_only() -> None:
    pacer: Pacer[None] = Pacer(_stream(20), 4, 1)
    assert [g.key for g in pacer.release()] == list(range(8))  # this step's batch and the next
    assert pacer.release() == []
    pacer.step_trained()
    assert [g.key for g in pacer.release()] == list(range(8, 12))


def test_a_step_waits_for_the_due_groups_instead_of_fresher_ones() -> None:
    """One step ahead, batch 2: groups 0-3 released at step 0; step 0 takes 1 and 2 (0 and 3 are
    slow). At step 1, 0 and 3 are due: the fresh groups 4 and 5 finish first and wait for step 2."""
    pacer: Pacer[None] = Pacer(_stream(8), 2, 1)
    requests = {g.key: g for g in pacer.release()}
    pacer.hold(_finished(requests[1]))
    pacer.hold(_finished(requests[2]))
    assert [pacer.take_next(2).request.key, pacer.take_next(1).request.key] == [1, 2]  # type: ignore[union-attr]
    pacer.step_trained()
    requests.update({g.key: g for g in pacer.release()})
    assert sorted(requests) == list(range(6)) and pacer.due_outstanding() == 2
    pacer.hold(_finished(requests[4]))
    pacer.hold(_finished(requests[5]))
    assert pacer.take_next(2) is None  # both places are 0's and 3's
    pacer.hold(_finished(requests[3]))
    assert pacer.take_next(2).request.key == 3  # type: ignore[union-attr]
    assert pacer.take_next(1) is None
    pacer.hold(_finished(requests[0]))
    assert pacer.take_next(1).request.key == 0  # type: ignore[union-attr]
    pacer.step_trained()
    pacer.release()
    assert [pacer.take_next(2).request.key, pacer.take_next(1).request.key] == [4, 5]  # type: ignore[union-attr]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="groups_per_batch"):
        Pacer(_stream(1), 0, 1)
    with pytest.raises(ValueError, match="steps_ahead"):
        Pacer(_stream(1), 1, -1)
    with pytest.raises(ValueError, match="repeats"):
        Pacer([GroupRequest(1, {}), GroupRequest(1, {})], 1, 0)
    pacer: Pacer[None] = Pacer(_stream(2), 1, 0)
    with pytest.raises(ValueError, match="not released"):
        pacer.hold(_finished(GroupRequest(1, {})))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sampling_steps_ahead": 1}, "needs async_config"),
        (
            {
                "sampling_steps_ahead": 2,
                "async_config": AsyncConfig(max_steps_off_policy=1, groups_per_batch=8),
            },
            "sampling_steps_ahead",
        ),
        (
            {
                "sampling_steps_ahead": -1,
                "async_config": AsyncConfig(max_steps_off_policy=1, groups_per_batch=8),
            },
            "sampling_steps_ahead",
        ),
    ],
)
def test_pacing_config_is_checked(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(log_path=str(tmp_path), batch_size=8, **overrides)  # type: ignore[arg-type]
