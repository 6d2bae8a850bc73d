"""Bad input at the core's door (issue 14): nothing malformed is trained on, nothing raises, and
every rejection is named per call or per rollout and counted."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from agentlightning.types import Span
from spanfactory import CallSpec, call_spans, conversation, reward_span, span, span_id
from tinker_cookbook.rl.data_processing import assemble_training_data, compute_advantages

from agl_tinker import spans as S
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.core.rewards import ExclusionReason
from agl_tinker.core.steps import AlignOptions
from agl_tinker.core.trajectory import problem_metrics, rollout_trajectory, trajectory_group
from agl_tinker.core.types import CallProblem, ReconstructOptions, RewardProblem

IDS = dict(rollout_id="ro-1", attempt_id="at-1")
VOCAB = 150_000
CHECKED = ReconstructOptions(vocab_size=VOCAB)


def _with_reward_attributes(attributes: dict[str, Any], n_calls: int = 2) -> list[Span]:
    _, spans = conversation(n_calls, final_reward=None)
    return [
        *spans,
        span(
            S.REWARD_SPAN_NAME, attributes, span_id=span_id(0, "r"), sequence_id=99, start=2e3, end=2e3, **IDS
        ),
    ]


def _corrupt(spans: list[Span], sid: str, key: str, position: int, value: Any) -> list[Span]:
    """The spans with one element of one list attribute replaced after writing (the writer itself
    refuses such values): fingerprints and everything else stay as written."""
    out = []
    for s in spans:
        if s.span_id == sid:
            values = list(s.attributes[key])
            values[position] = value
            s = s.model_copy(update={"attributes": {**s.attributes, key: values}})
        out.append(s)
    return out


def _spans_of(specs: list[CallSpec], writer: str = "agl", reward: float | None = 1.0) -> list[Span]:
    out: list[Span] = []
    for k, c in enumerate(specs):
        out += call_spans(c, writer, span_id=span_id(k), sequence_id=k + 1, **IDS)  # type: ignore[arg-type]
    if reward is not None:
        out.append(reward_span(reward, 1e4, span_id=span_id(0, "r"), sequence_id=len(specs) + 1, **IDS))
    return out


# --- rewards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (math.nan, RewardProblem.NOT_FINITE),
        (math.inf, RewardProblem.NOT_FINITE),
        (-math.inf, RewardProblem.NOT_FINITE),
        (1e308, RewardProblem.OUT_OF_RANGE),
        (-1.7e308, RewardProblem.OUT_OF_RANGE),
        (10**400, RewardProblem.OUT_OF_RANGE),
    ],
)
def test_non_finite_or_huge_reward_excludes_the_rollout_and_keeps_advantages_finite(
    value: float, problem: RewardProblem
) -> None:
    spans = _with_reward_attributes(
        {f"{S.REWARD_PREFIX}.0.name": "primary", f"{S.REWARD_PREFIX}.0.value": value}
    )
    bad = rollout_trajectory(spans, status="succeeded")
    assert bad.exclusion is ExclusionReason.BAD_REWARD and bad.trajectory is None
    assert bad.reconstruction.metrics[f"reward_problem/{problem}"] == 1
    assert problem_metrics([bad])[f"rewards/problem/{problem}"] == 1
    # Its group trains on the good rollouts only, with finite advantages.
    good = [rollout_trajectory(conversation(2, final_reward=r)[1], status="succeeded") for r in (0.0, 1.0)]
    group, report = trajectory_group([bad, *good], min_valid=2)
    assert group is not None and report.exclusions == {"bad_reward": 1}
    advantages = compute_advantages([group])
    assert all(math.isfinite(a) for a in advantages[0].tolist())
    data, _ = assemble_training_data([group], advantages)
    assert len(data) == 2


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        (
            {f"{S.REWARD_PREFIX}.0.name": "primary", f"{S.REWARD_PREFIX}.0.value": "high"},
            RewardProblem.NOT_A_NUMBER,
        ),
        (
            {f"{S.REWARD_PREFIX}.0.name": "primary", f"{S.REWARD_PREFIX}.0.value": True},
            RewardProblem.NOT_A_NUMBER,
        ),
        ({f"{S.REWARD_PREFIX}.0.name": "primary"}, RewardProblem.MISSING_VALUE),
        # Agent-lightning's own parser raises a pydantic ValidationError on this one.
        ({f"{S.REWARD_PREFIX}.1.value": "x"}, RewardProblem.NOT_A_NUMBER),
        ({"agentops.task.output": '{"type": "reward", "value": "x"}'}, RewardProblem.NOT_A_NUMBER),
    ],
)
def test_malformed_reward_span_excludes_its_rollout_instead_of_raising(
    attributes: dict[str, Any], problem: RewardProblem
) -> None:
    result = rollout_trajectory(_with_reward_attributes(attributes), status="succeeded")
    assert result.exclusion is ExclusionReason.BAD_REWARD and result.trajectory is None
    (event,) = result.reconstruction.rewards
    assert event.problem is problem and math.isnan(event.value)


def test_an_annotation_that_is_no_reward_is_not_a_bad_reward() -> None:
    result = rollout_trajectory(_with_reward_attributes({"agentlightning.tag.0": "fast"}), status="succeeded")
    assert result.exclusion is ExclusionReason.NO_REWARD and result.reconstruction.rewards == ()


def test_a_good_reward_after_a_bad_one_still_excludes_the_rollout() -> None:
    _, spans = conversation(2, final_reward=1.0)
    nan = span(
        S.REWARD_SPAN_NAME,
        S.reward_attributes(math.nan),
        span_id=span_id(5, "r"),
        sequence_id=50,
        start=1.5e3,
        end=1.5e3,
        **IDS,
    )
    assert rollout_trajectory([*spans, nan], status="succeeded").exclusion is ExclusionReason.BAD_REWARD


# --- token ids and logprobs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("prompt", -1, CallProblem.TOKEN_ID_OUT_OF_RANGE),
        ("prompt", VOCAB, CallProblem.TOKEN_ID_OUT_OF_RANGE),
        ("response", 2**40, CallProblem.TOKEN_ID_OUT_OF_RANGE),
        ("response", VOCAB + 7, CallProblem.TOKEN_ID_OUT_OF_RANGE),
        ("prompt", 5.0, CallProblem.MALFORMED_TOKEN_IDS),
        ("response", "12", CallProblem.MALFORMED_TOKEN_IDS),
        ("prompt", None, CallProblem.MALFORMED_TOKEN_IDS),
    ],
)
def test_every_token_id_is_checked_not_only_the_ends(field: str, value: Any, problem: CallProblem) -> None:
    calls, spans = conversation(3)
    key = S.PROMPT_TOKEN_IDS if field == "prompt" else S.RESPONSE_TOKEN_IDS
    middle = len(getattr(calls[1], field)) // 2  # the ends stay plausible
    spans = _corrupt(spans, span_id(1), key, middle, value)
    decoded: list[list[int]] = []

    def decode(ids: list[int]) -> str:
        decoded.append(ids)
        if any(not 0 <= i < VOCAB for i in ids):
            raise OverflowError("out of range integral type conversion attempted")  # as HF tokenizers do
        return "text"

    result = rollout_trajectory(spans, status="succeeded", decode=decode, reconstruct_options=CHECKED)
    rec = result.reconstruction
    assert rec.calls[1].problem is problem and rec.metrics[f"problem/{problem}"] == 1
    assert problem_metrics([result])[f"calls/problem/{problem}"] == 1
    assert getattr(rec.calls[1], f"{field}_token_ids") is None  # never read downstream
    # The bad call is not trained; the others are, and no decode ever saw a bad id.
    assert 1 not in result.alignment.step_calls
    assert all(0 <= i < VOCAB for ids in decoded for i in ids)


def test_without_a_vocabulary_size_ids_must_still_fit_in_uint32() -> None:
    _, spans = conversation(1)
    (call,) = reconstruct(_corrupt(spans, span_id(0), S.PROMPT_TOKEN_IDS, 5, 2**32)).calls
    assert call.problem is CallProblem.TOKEN_ID_OUT_OF_RANGE


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.5, "x", None])
def test_logprobs_must_be_finite_and_not_positive(value: Any) -> None:
    _, spans = conversation(2)
    rec = reconstruct(_corrupt(spans, span_id(0), S.AGL_RESPONSE_LOGPROBS, 3, value))
    assert rec.calls[0].problem is CallProblem.BAD_LOGPROBS
    assert rec.calls[1].problem is None
    # The client writer's JSON logprobs: unreadable ones are missing, readable bad ones bad.
    calls, _ = conversation(2, final_reward=None)
    if not isinstance(value, float):
        return
    logprobs = list(calls[0].logprobs or [])
    logprobs[3] = value
    calls[0] = replace(calls[0], logprobs=logprobs)
    assert reconstruct(_spans_of(calls, "client")).calls[0].problem is CallProblem.BAD_LOGPROBS


def test_float_noise_above_zero_is_tolerated() -> None:
    calls, _ = conversation(1, final_reward=None)
    calls[0] = replace(calls[0], logprobs=[1e-7, *(calls[0].logprobs or [])[1:]])
    assert reconstruct(_spans_of(calls)).calls[0].problem is None


# --- lost calls and lying fingerprints --------------------------------------------------------


def test_a_lost_middle_call_is_a_gap_not_a_shorter_trajectory() -> None:
    calls, spans = conversation(3)
    lost = [s for s in spans if s.span_id != span_id(1)]
    result = rollout_trajectory(lost, status="succeeded")
    (gap,) = result.alignment.gaps
    assert (gap.call_index, gap.claimed_prefix_length) == (1, len(calls[1].prompt) + len(calls[1].response))
    assert result.exclusion is ExclusionReason.GAP and result.trajectory is None
    assert problem_metrics([result])["align/gaps"] == 1
    # Asked to, it trains what was recorded; the lost call's tokens are only masked context.
    kept = rollout_trajectory(lost, status="succeeded", align_options=AlignOptions(on_gap="train"))
    assert kept.exclusion is None and kept.alignment.metrics["gaps"] == 1
    assert [s.ac.tokens for s in kept.alignment.steps] == [calls[0].response, calls[2].response]
    # The first call lost is a gap too; the intact conversation has none.
    assert rollout_trajectory(spans[1:], status="succeeded").exclusion is ExclusionReason.GAP
    assert rollout_trajectory(spans, status="succeeded").alignment.gaps == ()


def test_a_lost_last_call_is_a_gap_when_the_endpoint_served_more_calls_than_spans_hold() -> None:
    calls, spans = conversation(3)
    lost_last = [s for s in spans if s.span_id != span_id(2)]
    # No later call claims the last call's tokens: the spans alone cannot see it is lost.
    assert rollout_trajectory(lost_last, status="succeeded").exclusion is None
    result = rollout_trajectory(lost_last, status="succeeded", served_calls=3)
    assert result.exclusion is ExclusionReason.GAP and result.trajectory is None
    assert result.unrecorded_calls == 1 and result.lost_calls == 1
    assert problem_metrics([result])["align/gaps"] == 1
    # A lost middle call seen both ways is one lost call, not two.
    lost_middle = [s for s in spans if s.span_id != span_id(1)]
    both = rollout_trajectory(lost_middle, status="succeeded", served_calls=3)
    assert both.exclusion is ExclusionReason.GAP and problem_metrics([both])["align/gaps"] == 1
    # Asked to train around lost calls, the recorded ones are trained.
    kept = rollout_trajectory(
        lost_last, status="succeeded", served_calls=3, align_options=AlignOptions(on_gap="train")
    )
    assert kept.exclusion is None and kept.unrecorded_calls == 1
    assert [s.ac.tokens for s in kept.alignment.steps] == [calls[0].response, calls[1].response]
    # As many spans as served calls (or more: spans of calls served elsewhere) is no gap.
    for served in (3, 2, 0):
        assert rollout_trajectory(spans, status="succeeded", served_calls=served).exclusion is None
    with pytest.raises(ValueError, match="served_calls"):
        rollout_trajectory(spans, status="succeeded", served_calls=-1)


def test_a_call_without_token_ids_is_reported_once_not_also_as_a_gap() -> None:
    calls, _ = conversation(3)
    calls[1] = replace(calls[1], drop_prompt_ids=True)
    result = rollout_trajectory(_spans_of(calls), status="succeeded")
    assert result.alignment.gaps == () and result.exclusion is None
    assert result.reconstruction.metrics["problem/missing_prompt_token_ids"] == 1


def _change_prompt_token(spans: list[Span], sid: str, position: int, *, rehash: bool) -> list[Span]:
    """Call ``sid``'s prompt with one token changed; ``rehash``: its sequence fingerprint is
    recomputed over the changed tokens (a writer whose prefix fingerprint then lies)."""
    out = []
    for s in spans:
        if s.span_id == sid:
            attrs = dict(s.attributes)
            prompt = list(attrs[S.PROMPT_TOKEN_IDS])
            prompt[position] = (prompt[position] + 1) % VOCAB
            attrs[S.PROMPT_TOKEN_IDS] = prompt
            if rehash:
                attrs[S.AGL_SEQUENCE_FINGERPRINT] = S.token_fingerprint(
                    prompt + list(attrs[S.RESPONSE_TOKEN_IDS])
                )
            s = s.model_copy(update={"attributes": attrs})
        out.append(s)
    return out


def test_a_token_changed_after_writing_is_reported_by_the_writers_fingerprint() -> None:
    _, spans = conversation(3)
    result = rollout_trajectory(
        _change_prompt_token(spans, span_id(2), 100, rehash=False), status="succeeded"
    )
    assert result.reconstruction.calls[2].problem is CallProblem.FINGERPRINT_MISMATCH
    assert result.alignment.step_calls == (0, 1)  # the changed call is never trained


def test_a_token_changed_under_an_intact_prefix_fingerprint_is_drift() -> None:
    _, spans = conversation(3)
    result = rollout_trajectory(_change_prompt_token(spans, span_id(2), 100, rehash=True), status="succeeded")
    assert result.reconstruction.problems == ()
    (drift,) = result.alignment.drift
    assert drift.call_index == 2 and drift.token_index == 100
    # As many datums as sequences: nothing the cookbook splits silently.
    assert result.alignment.metrics["sequences"] == 2 and result.trajectory is not None
    group, _ = trajectory_group([result])
    assert group is not None
    data, _ = assemble_training_data([group], compute_advantages([group]))
    assert len(data) == 2


# --- agent names and parse failures ------------------------------------------------------------


def test_agent_name_does_not_depend_on_unrelated_spans() -> None:
    parent = CallSpec([1, 2], [3], [-0.1], 1.0, 1.5, "r0", agent_name="planner")
    child = CallSpec([1, 2, 3, 4], [5], [-0.1], 2.0, 2.5, "r1")
    calls_only = [
        *call_spans(parent, "agl", span_id=span_id(0), sequence_id=1, **IDS),
        *call_spans(child, "agl", span_id=span_id(1), sequence_id=2, parent_id=span_id(0), **IDS),
    ]
    with_reward = [*calls_only, reward_span(1.0, 3.0, span_id=span_id(0, "r"), sequence_id=3, **IDS)]
    names = [[c.agent_name for c in reconstruct(spans).calls] for spans in (calls_only, with_reward)]
    assert names[0] == names[1] == ["planner", "planner"]


def test_tool_call_parse_failures_are_summed_into_the_step_metrics() -> None:
    calls, _ = conversation(3)
    calls[0] = replace(calls[0], extra={S.AGL_TOOL_CALL_PARSE_FAILURES: 2})
    calls[2] = replace(calls[2], extra={S.AGL_TOOL_CALL_PARSE_FAILURES: 1})
    results = [rollout_trajectory(_spans_of(calls), status="succeeded") for _ in range(2)]
    assert results[0].reconstruction.metrics["tool_call_parse_failures"] == 3
    assert problem_metrics(results)["tool_calls/parse_failures"] == 6


@pytest.mark.parametrize("writer", ["agl", "client", "proxy"])
def test_two_calls_given_one_response_id_are_reported_not_merged_into_one(writer: Any) -> None:
    """Spans of different calls that share a response id (a writer's bug, or a changed record) used
    to fold into one call, the other's tokens silently lost; now the call is reported."""
    first = CallSpec(
        prompt=[1, 2, 3], response=[4, 5], logprobs=[-0.1, -0.2], start=1.0, end=2.0, response_id="r"
    )
    second = replace(first, prompt=[1, 2, 3, 4, 5, 6], response=[7], logprobs=[-0.3], start=3.0, end=4.0)
    common = dict(rollout_id="ro", attempt_id="at")
    spans = [
        *call_spans(first, writer, span_id=span_id(0), sequence_id=1, **common),
        *call_spans(second, writer, span_id=span_id(1), sequence_id=2, **common),
    ]
    rec = reconstruct(spans)
    assert [c.problem for c in rec.calls] == [CallProblem.CONFLICTING_SPANS]
    assert rec.metrics["problem/conflicting_spans"] == 1
    # The same call recorded twice (our endpoint and the client's tracer) is no conflict.
    twice = [*call_spans(first, "agl", span_id=span_id(0), sequence_id=1, **common)]
    twice += call_spans(first, "client", span_id=span_id(0, "d"), sequence_id=1, **common)
    assert [c.problem for c in reconstruct(twice).calls] == [None]
