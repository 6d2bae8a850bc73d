"""Staleness in a step's row, policy by policy: each policy's calls are measured against the step
under ``policy/<name>/staleness/*``; ``staleness/*`` is every policy's calls together (before,
it was the first policy's alone); a run's only policy keeps its unprefixed keys."""

from __future__ import annotations

from typing import Any

from spanfactory import CallSpec, call_spans, reward_span, span_id

from agl_tinker.core.reconstruct import ReconstructOptions
from agl_tinker.core.trajectory import rollout_trajectory
from agl_tinker.dispatch.types import BatchResult, DispatchStats, GroupResult, RolloutOutcome
from agl_tinker.loop.policy import PolicyResults
from agl_tinker.loop.policy_metrics import staleness_by_policy

STEP = 4
POLICIES = ("speaker", "checker")
VERSIONS = [{"speaker": 3, "checker": 1}, {"speaker": 4, "checker": 4}]
"""Per group (one rollout each): the weights version each policy's call was sampled with."""


def _spans(rollout_id: str, versions: dict[str, int]) -> list[Any]:
    ids = {"rollout_id": rollout_id, "attempt_id": f"at-{rollout_id}"}
    spans: list[Any] = []
    for n, (model, version) in enumerate(versions.items()):
        call = CallSpec(
            prompt=[1, 2, 3 + n],
            response=[4, 5],
            logprobs=[-0.1, -0.2],
            start=10.0 + n,
            end=10.5 + n,
            response_id=f"r{n}",
            model=model,
            weights_version=version,
        )
        spans += call_spans(call, "agl", span_id=span_id(n), sequence_id=n, **ids)
    return [*spans, reward_span(1.0, 20.0, span_id=span_id(9, "r"), sequence_id=9, **ids)]


def _outcome(index: int, result: PolicyResults) -> RolloutOutcome[PolicyResults]:
    return RolloutOutcome(
        rollout_id=f"ro-{index}",
        group_index=index,
        slot=0,
        status="succeeded",
        attempt_status="succeeded",
        n_attempts=1,
        n_spans=5,
        n_duplicate_spans=0,
        result=result,
        end_time=1.0,
        ready_time=1.0,
    )


def _batch(names: tuple[str | None, ...]) -> BatchResult[PolicyResults]:
    groups = []
    for index, versions in enumerate(VERSIONS):
        spans = _spans(f"ro-{index}", versions)
        result = {
            name: rollout_trajectory(
                spans,
                status="succeeded",
                reconstruct_options=ReconstructOptions(model_match=f"^{name}$" if name else None),
            )
            for name in names
        }
        groups.append(GroupResult(index, {"x": index}, (_outcome(index, result),)))
    stats = DispatchStats(2, 0, {"succeeded": 2}, 1.0, 0.0, 1.0, 0.0, 2, overheads_s=())
    return BatchResult(tuple(groups), stats)


def test_each_policy_reports_the_staleness_of_its_own_calls() -> None:
    row = staleness_by_policy(_batch(POLICIES), STEP, list(POLICIES))
    speaker = {
        k.removeprefix("policy/speaker/"): v for k, v in row.items() if k.startswith("policy/speaker/")
    }
    checker = {
        k.removeprefix("policy/checker/"): v for k, v in row.items() if k.startswith("policy/checker/")
    }
    # speaker: 1 and 0 versions behind; checker: 3 and 0
    assert speaker == {
        "staleness/call_mean": 0.5,
        "staleness/call_max": 1,
        "staleness/group_mean": 0.5,
        "staleness/group_max": 1,
    }
    assert checker == {
        "staleness/call_mean": 1.5,
        "staleness/call_max": 3,
        "staleness/group_mean": 1.5,
        "staleness/group_max": 3,
    }
    # together: calls 1, 3, 0, 0; the first group is as stale as its checker call
    assert {k: v for k, v in row.items() if k.startswith("staleness/")} == {
        "staleness/call_mean": 1.0,
        "staleness/call_max": 3,
        "staleness/group_mean": 1.5,
        "staleness/group_max": 3,
    }


def test_a_single_policy_keeps_its_unprefixed_keys() -> None:
    row = staleness_by_policy(_batch((None,)), STEP, [None])
    assert row == {
        "staleness/call_mean": 1.0,
        "staleness/call_max": 3,
        "staleness/group_mean": 1.5,
        "staleness/group_max": 3,
    }
