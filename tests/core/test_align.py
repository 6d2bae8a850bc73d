"""Alignment: sequences, drift reports, and what the cookbook makes of them."""

from __future__ import annotations

from dataclasses import replace

import tinker
from spanfactory import CallSpec, call_spans, conversation, span_id
from tinker_cookbook.rl.data_processing import trajectory_to_data

from agl_tinker import spans as S
from agl_tinker.core.align import align_calls, model_input
from agl_tinker.core.drift import DriftKind
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.core.rewards import ExclusionReason, RewardOptions
from agl_tinker.core.trajectory import alignment_trajectory, rollout_trajectory, trajectory_group

IDS = dict(rollout_id="ro-1", attempt_id="at-1")


def calls_of(specs: list[CallSpec], writer: str = "agl"):  # type: ignore[no-untyped-def]
    spans = []
    for k, c in enumerate(specs):
        spans += call_spans(c, writer, span_id=span_id(k), sequence_id=k + 1, **IDS)  # type: ignore[arg-type]
    return reconstruct(spans).calls


def mk(k: int, prompt: list[int], response: list[int], start: float, **kw: object) -> CallSpec:
    return CallSpec(
        prompt=prompt,
        response=response,
        logprobs=[-(k + 1) / 10] * len(response),
        start=start,
        end=start + 0.5,
        response_id=f"r{k}",
        **kw,  # type: ignore[arg-type]
    )


def test_growing_conversation_is_one_sequence_and_one_datum() -> None:
    for writer in ("agl", "client", "proxy"):
        _specs, spans = conversation(5, writer=writer)  # type: ignore[arg-type]
        alignment = align_calls(reconstruct(spans).calls)
        assert alignment.metrics["sequences"] == 1 and not alignment.drift
        assert alignment.metrics["action_tokens"] == 5 * 50
        assert alignment.metrics["observation_tokens"] == 200 + 4 * 20
        data = trajectory_to_data(alignment_trajectory(alignment), 1.0)
        assert len(data) == 1
        assert int(data[0].loss_fn_inputs["mask"].to_torch().sum()) == 250


def test_fingerprints_are_consulted_but_the_tokens_decide() -> None:
    _, with_fp = conversation(6, writer="agl")
    _, without = conversation(6, writer="client")
    a, b = align_calls(reconstruct(with_fp).calls), align_calls(reconstruct(without).calls)
    # A fingerprint can outlive a changed token: every extension is confirmed on the tokens.
    assert a.metrics["fingerprint_checks"] == 5 and a.metrics["exact_checks"] == 5
    assert b.metrics["fingerprint_checks"] == 0 and b.metrics["exact_checks"] == 5
    assert [s.ac for s in a.steps] == [s.ac for s in b.steps]
    assert [s.observation_tokens for s in a.steps] == [s.observation_tokens for s in b.steps]


def test_drift_is_reported_with_position_and_decoded_windows() -> None:
    first = mk(0, [1, 2, 3], [4, 5], 1.0)
    # The history was re-rendered: token 5 came back as 6.
    second = mk(1, [1, 2, 3, 4, 6, 7], [8], 2.0, prefix_length=5)
    alignment = align_calls(calls_of([first, second]), decode=lambda ts: "|".join(map(str, ts)))
    (drift,) = alignment.drift
    assert (drift.call_index, drift.expected_call_index, drift.token_index) == (1, 0, 4)
    assert drift.kind is DriftKind.DRIFT
    assert drift.expected_text == "1|2|3|4|5" and drift.actual_text == "1|2|3|4|6|7"
    assert alignment.metrics["sequences"] == 2 and alignment.metrics["drift_events"] == 1
    # Nothing re-rendered is trained: the new sequence's actions are only the sampled tokens.
    assert [s.ac.tokens for s in alignment.steps] == [[4, 5], [8]]
    assert len(trajectory_to_data(alignment_trajectory(alignment), 1.0)) == 2


def test_shorter_prompt_reports_the_end_of_the_shorter_one() -> None:
    alignment = align_calls(calls_of([mk(0, [1, 2, 3], [4], 1.0), mk(1, [1, 2], [5], 2.0)]))
    assert alignment.drift[0].token_index == 2


def test_concurrent_branches_are_separate_sequences_not_drift() -> None:
    a = mk(0, [1, 2], [3], 1.0)
    b = mk(1, [1, 2], [9], 1.1)  # same prompt, overlapping in time
    a2 = mk(2, [1, 2, 3, 4], [5], 2.0)  # continues a
    b2 = mk(3, [1, 2, 9, 4], [6], 2.1)  # continues b
    alignment = align_calls(calls_of([a, b, a2, b2]))
    assert alignment.metrics["drift_events"] == 0 and alignment.metrics["concurrent_branches"] == 1
    assert [seq.call_indices for seq in alignment.sequences] == [(0, 2), (1, 3)]
    # Transitions are grouped by sequence, so the cookbook makes one datum each.
    assert alignment.step_calls == (0, 2, 1, 3)
    assert len(trajectory_to_data(alignment_trajectory(alignment), 1.0)) == 2


def test_untrainable_call_in_the_middle_becomes_context() -> None:
    a = mk(0, [1, 2], [3], 1.0)
    b = replace(mk(1, [1, 2, 3, 4], [5], 2.0, prefix_length=3), logprobs=None)
    c = mk(2, [1, 2, 3, 4, 5, 6], [7], 3.0, prefix_length=5)
    alignment = align_calls(calls_of([a, b, c]))
    assert alignment.skipped == ((1, "missing_logprobs"),)
    assert alignment.metrics["sequences"] == 1 and alignment.metrics["exact_checks"] == 2
    # Call 1's sampled tokens sit in call 2's observation (masked), never trained without logprobs.
    assert [s.observation_tokens for s in alignment.steps] == [2, 3]
    datum = trajectory_to_data(alignment_trajectory(alignment), 1.0)[0]
    assert datum.loss_fn_inputs["mask"].to_torch().tolist() == [0, 1, 0, 0, 0, 1]


def test_call_without_tokens_does_not_break_the_sequence() -> None:
    a = mk(0, [1, 2], [3], 1.0)
    b = replace(mk(1, [1, 2, 3, 4], [5], 2.0), drop_prompt_ids=True)
    c = mk(2, [1, 2, 3, 4, 5, 6], [7], 3.0)
    alignment = align_calls(calls_of([a, b, c]))
    assert alignment.skipped == ((1, "missing_prompt_token_ids"),) and alignment.metrics["sequences"] == 1


def test_model_input_shortcut_equals_the_validated_model() -> None:
    fast = model_input([5, 6, 7])
    assert fast == tinker.ModelInput.from_ints([5, 6, 7])
    assert fast.length == 3 and fast.to_ints() == [5, 6, 7]
    assert fast.model_dump() == tinker.ModelInput.from_ints([5, 6, 7]).model_dump()


def test_rollout_trajectory_and_group() -> None:
    _, good = conversation(3, final_reward=1.0)
    _, bad = conversation(3, final_reward=0.0, rollout_id="ro-2")
    _, silent = conversation(2, final_reward=None, rollout_id="ro-3")
    r1 = rollout_trajectory(good, status="succeeded")
    r2 = rollout_trajectory(bad, status="succeeded")
    r3 = rollout_trajectory(silent, status="succeeded")
    r4 = rollout_trajectory(good, status="failed")
    assert r1.trajectory is not None and r1.trajectory.transitions[-1].reward == 1.0
    assert r1.trajectory.transitions[-1].episode_done and r1.metrics["align/sequences"] == 1
    assert r3.trajectory is None and r3.exclusion is ExclusionReason.NO_REWARD
    assert r4.trajectory is None and r4.exclusion is ExclusionReason.FAILED
    group, report = trajectory_group([r1, r2, r3, r4, None], min_valid=2)
    assert group is not None and len(group.trajectories_G) == 2
    assert group.get_total_rewards() == [1.0, 0.0]
    assert report.exclusions == {"no_reward": 1, "failed": 1, "no_spans": 1}
    dropped, report = trajectory_group([r1, r3, r4], min_valid=2)
    assert dropped is None and report.selection.dropped and report.selection.valid == 1


def test_scored_exclusions_train_at_the_fixed_value() -> None:
    _, good = conversation(2)
    scored = rollout_trajectory(good, status="failed", reward_options=RewardOptions(excluded_score=-1.0))
    assert scored.exclusion is ExclusionReason.FAILED and scored.trajectory is not None
    assert [t.reward for t in scored.trajectory.transitions] == [0.0, -1.0]
    no_calls = [s for s in good if s.name != S.LLM_CALL_SPAN_NAME]
    empty = rollout_trajectory(no_calls, status="failed", reward_options=RewardOptions(excluded_score=-1.0))
    assert empty.trajectory is not None and empty.trajectory.transitions[0].reward == -1.0
    assert trajectory_to_data(empty.trajectory, 1.0) == []


def test_tuple_token_ids_from_otel_spans_align_like_lists() -> None:
    _, spans = conversation(3, writer="client")
    as_tuples = [
        s.model_copy(
            update={
                "attributes": {k: tuple(v) if isinstance(v, list) else v for k, v in s.attributes.items()}
            }
        )
        for s in spans
    ]
    a, b = align_calls(reconstruct(spans).calls), align_calls(reconstruct(as_tuples).calls)
    assert a.metrics == b.metrics and [s.ac for s in a.steps] == [s.ac for s in b.steps]
    assert len(trajectory_to_data(alignment_trajectory(b), 1.0)) == 1
