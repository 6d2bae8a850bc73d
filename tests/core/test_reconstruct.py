"""Span reconstruction, one documented edge case per test."""

from __future__ import annotations

import json

import pytest
from agentlightning.adapter import LlmProxyTraceToTriplet, TracerTraceToTriplet
from spanfactory import CallSpec, agent_span, call_spans, conversation, reward_span, span, span_id

from agl_tinker import spans as S
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.core.types import CallProblem, ReconstructOptions

IDS = dict(rollout_id="ro-1", attempt_id="at-1")


def spec(k: int, prompt: list[int], response: list[int], start: float, **kw: object) -> CallSpec:
    return CallSpec(
        prompt=prompt,
        response=response,
        logprobs=[-0.1 * (j + 1) for j in range(len(response))],
        start=start,
        end=start + 0.5,
        response_id=f"resp-{k}",
        **kw,  # type: ignore[arg-type]
    )


def test_any_order_and_duplicates_give_the_same_calls() -> None:
    calls, spans = conversation(6)
    shuffled = list(reversed(spans)) + spans[:3]
    rec = reconstruct(shuffled)
    assert [c.response_id for c in rec.calls] == [c.response_id for c in calls]
    assert rec.metrics["duplicate_spans"] == 3
    assert [list(c.prompt_token_ids or []) for c in rec.calls] == [c.prompt for c in calls]
    assert rec.calls[0].weights_version == 0 and rec.calls[0].finish_reason == "stop"
    assert rec.calls[0].model == "policy" and rec.calls[0].source == "agl_tinker"
    assert [r.value for r in rec.rewards] == [1.0] and rec.rewards[0].after_call == 5


def test_latest_attempt_by_default_and_others_on_request() -> None:
    _, old = conversation(2, attempt_id="at-old")
    _, new = conversation(3, attempt_id="at-new")
    new = [s.model_copy(update={"sequence_id": s.sequence_id + 100}) for s in new]
    rec = reconstruct(old + new)
    assert rec.attempt_id == "at-new" and len(rec.calls) == 3
    assert rec.metrics["other_attempt_spans"] == len(old)
    assert len(reconstruct(old + new, ReconstructOptions(attempt="at-old")).calls) == 2


def test_spans_of_two_rollouts_are_an_error() -> None:
    _, a = conversation(1, rollout_id="ro-a")
    _, b = conversation(1, rollout_id="ro-b")
    with pytest.raises(ValueError, match="several rollouts"):
        reconstruct(a + b)


def test_concurrent_calls_order_by_start_then_sequence_then_span_id() -> None:
    same = [spec(k, [1, 2], [3], start=5.0) for k in range(3)]
    spans = []
    for k, c in enumerate(same):
        spans += call_spans(c, "agl", span_id=span_id(2 - k), sequence_id=7, **IDS)
    order = [c.span_id for c in reconstruct(spans).calls]
    assert order == sorted(order)
    assert [c.index for c in reconstruct(list(reversed(spans))).calls] == [0, 1, 2]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"drop_prompt_ids": True}, CallProblem.MISSING_PROMPT_TOKEN_IDS),
        ({"drop_response_ids": True}, CallProblem.MISSING_RESPONSE_TOKEN_IDS),
        ({"logprobs": None}, CallProblem.MISSING_LOGPROBS),
        ({"logprobs": [-0.1]}, CallProblem.LOGPROB_COUNT_MISMATCH),
        ({"prompt": []}, CallProblem.EMPTY_PROMPT),
        ({"extra": {S.PROMPT_TOKEN_IDS: "not a list"}}, CallProblem.MALFORMED_TOKEN_IDS),
    ],
)
def test_untrainable_calls_are_reported_not_dropped(change: dict[str, object], problem: CallProblem) -> None:
    from dataclasses import replace

    call = replace(spec(0, [1, 2, 3], [4, 5], 1.0), **change)  # type: ignore[arg-type]
    rec = reconstruct(call_spans(call, "agl", span_id=span_id(0), sequence_id=1, **IDS))
    assert len(rec.calls) == 1 and rec.calls[0].problem is problem
    assert rec.metrics[f"problem/{problem}"] == 1 and rec.problems == rec.calls


def test_failed_call_without_response_is_reported() -> None:
    failed = span(
        S.LLM_CALL_SPAN_NAME,
        {S.RESPONSE_ID: "x"},
        span_id=span_id(0),
        sequence_id=1,
        start=1,
        end=2,
        status="ERROR",
        **IDS,
    )
    assert reconstruct([failed]).calls[0].problem is CallProblem.FAILED


@pytest.mark.parametrize("writer", ["agl", "client", "proxy"])
def test_every_writer_gives_the_same_call(writer: str) -> None:
    call = spec(0, [1, 2, 3], [4, 5], 1.0, finish_reason="length")
    rec = reconstruct(call_spans(call, writer, span_id=span_id(0), sequence_id=1, **IDS))  # type: ignore[arg-type]
    (got,) = rec.calls
    assert (list(got.prompt_token_ids or []), list(got.response_token_ids or [])) == ([1, 2, 3], [4, 5])
    assert list(got.logprobs or []) == pytest.approx(call.logprobs)
    assert got.finish_reason == "length" and got.problem is None and got.response_id == "resp-0"


def test_client_and_endpoint_spans_of_one_response_merge() -> None:
    call = spec(0, [1, 2, 3], [4, 5], 1.0)
    spans = call_spans(call, "client", span_id=span_id(0, "d"), sequence_id=2, **IDS)
    spans += call_spans(call, "agl", span_id=span_id(0), sequence_id=3, **IDS)
    spans += call_spans(call, "proxy", span_id=span_id(0, "p"), sequence_id=4, **IDS)
    rec = reconstruct(spans)
    assert len(rec.calls) == 1 and rec.calls[0].source == "agl_tinker"
    assert len(rec.calls[0].span_ids) == 4 and rec.metrics["merged_spans"] == 3


def test_client_span_without_tokens_is_filled_from_the_endpoint_span() -> None:
    call = spec(0, [1, 2, 3], [4, 5], 1.0)
    bare = span(
        S.CLIENT_LLM_CALL_SPAN_NAME,
        {S.RESPONSE_ID: "resp-0"},
        span_id=span_id(0, "d"),
        sequence_id=1,
        start=0.9,
        end=1.6,
        **IDS,
    )
    rec = reconstruct([bare, *call_spans(call, "agl", span_id=span_id(0), sequence_id=2, **IDS)])
    (got,) = rec.calls
    assert got.problem is None and got.start_time == 0.9 and got.end_time == 1.6


def test_filter_by_agent_name_and_model() -> None:
    main = spec(0, [1, 2], [3], 1.0)
    helper = spec(1, [9, 9], [8], 1.2, model="judge")
    spans = [agent_span("solver", 0.5, 3.0, span_id=span_id(0, "a"), sequence_id=1, **IDS)]
    spans += call_spans(main, "client", span_id=span_id(0), parent_id=span_id(0, "a"), sequence_id=2, **IDS)
    spans += call_spans(helper, "agl", span_id=span_id(1), sequence_id=3, **IDS)
    assert len(reconstruct(spans).calls) == 2
    by_agent = reconstruct(spans, ReconstructOptions(agent_match="^solver$"))
    assert [c.response_id for c in by_agent.calls] == ["resp-0"] and by_agent.metrics["filtered_calls"] == 1
    assert by_agent.calls[0].agent_name == "solver"
    by_model = reconstruct(spans, ReconstructOptions(model_match="^policy$"))
    assert [c.response_id for c in by_model.calls] == ["resp-0"]


def test_messages_are_decoded_on_demand() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "x"}]},
    ]
    call = spec(0, [1], [2], 1.0, messages=messages)
    (agl,) = reconstruct(call_spans(call, "agl", span_id=span_id(0), sequence_id=1, **IDS)).calls
    assert agl.messages == messages
    (client,) = reconstruct(
        call_spans(
            spec(0, [1], [2], 1.0, messages=messages[:1]), "client", span_id=span_id(0), sequence_id=1, **IDS
        )
    ).calls
    assert client.messages == messages[:1]


def test_reward_events_keep_dimensions_and_position() -> None:
    _calls, spans = conversation(3, final_reward=None)
    multi = span(
        S.REWARD_SPAN_NAME,
        S.reward_attributes(0.5, accuracy=1.0),
        span_id=span_id(1, "r"),
        sequence_id=9,
        start=1001.7,
        end=1001.7,
        **IDS,
    )
    early = reward_span(0.25, 10.0, span_id=span_id(2, "r"), sequence_id=0, **IDS)
    legacy = span(
        "reward",
        {"agentops.task.output": json.dumps({"type": "reward", "value": 2.0})},
        span_id=span_id(3, "r"),
        sequence_id=10,
        start=5000,
        end=5000,
        **IDS,
    )
    rec = reconstruct([*spans, multi, early, legacy])
    assert [(r.value, r.after_call) for r in rec.rewards] == [(0.25, None), (0.5, 1), (2.0, 2)]
    assert rec.rewards[1].dimensions == {"primary": 0.5, "accuracy": 1.0}


def test_agent_lightning_adapters_read_our_spans() -> None:
    calls, spans = conversation(4, with_messages=True)
    triplets = TracerTraceToTriplet(llm_call_match=S.TRIPLET_LLM_CALL_MATCH).adapt(spans)
    assert [t.prompt["token_ids"] for t in triplets] == [c.prompt for c in calls]
    assert [t.response["token_ids"] for t in triplets] == [c.response for c in calls]
    assert [t.metadata["response_id"] for t in triplets] == [c.response_id for c in calls]
    assert triplets[-1].reward == 1.0 and triplets[0].prompt["raw_content"][0]["role"] == "system"
    proxy = LlmProxyTraceToTriplet().adapt(spans)
    assert [t.response["token_ids"] for t in proxy] == [c.response for c in calls]


def test_llm_call_attributes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="response_id"):
        S.llm_call_attributes(prompt_token_ids=[1], response_token_ids=[2], logprobs=None, response_id="")
    with pytest.raises(ValueError, match="token ids"):
        S.llm_call_attributes(prompt_token_ids=[-1], response_token_ids=[2], logprobs=None, response_id="r")
    with pytest.raises(ValueError, match="prefix_length"):
        S.llm_call_attributes(
            prompt_token_ids=[1], response_token_ids=[2], logprobs=None, response_id="r", prefix_length=5
        )
    attrs = S.llm_call_attributes(
        prompt_token_ids=[1, 2], response_token_ids=[3], logprobs=[-1], response_id="r", prefix_length=1
    )
    assert attrs[S.AGL_PREFIX_FINGERPRINT] == S.token_fingerprint([1])
    assert attrs[S.AGL_SEQUENCE_FINGERPRINT] == S.token_fingerprint([1, 2, 3])


def test_dedupe_spans_keeps_one_copy_per_id_the_richest() -> None:
    from agl_tinker.core.reconstruct import dedupe_spans

    _, spans = conversation(3)
    poorer = span(
        spans[1].name,
        {S.PROMPT_TOKEN_IDS: [1]},
        span_id=spans[1].span_id,
        sequence_id=spans[1].sequence_id,
        start=spans[1].start_time,
        end=spans[1].end_time,
        **IDS,
    )
    unique, dropped = dedupe_spans([*spans, poorer, spans[0]])
    assert dropped == 2 and unique == spans  # first appearance order; the richer copy kept
    unique, dropped = dedupe_spans([poorer, *spans])
    assert dropped == 1 and unique[0] is spans[1] and len(unique) == len(spans)


def test_calls_without_any_token_are_problems_under_a_vocabulary_bound() -> None:
    # Used to raise ValueError (the maximum of no token ids) when vocab_size was set.
    attrs = S.llm_call_attributes(
        prompt_token_ids=[],
        response_token_ids=[],
        logprobs=[],
        response_id="r",
        model="m",
        finish_reason="stop",
    )
    s = span(S.LLM_CALL_SPAN_NAME, attrs, span_id=span_id(1), sequence_id=1, start=1.0, end=2.0, **IDS)
    (call,) = reconstruct([s], ReconstructOptions(vocab_size=100)).calls
    assert call.problem is CallProblem.EMPTY_PROMPT
