"""Encode LLM calls and rewards as Agent-lightning spans, exactly as the store holds them.

Three writers: ``agl`` (our endpoint, via :func:`agl_tinker.spans.llm_call_attributes`), ``client``
(the runner's AgentOps tracer: ``openai.chat.completion`` with ``prompt_token_ids``,
``response_token_ids`` and ``logprobs.content``) and ``proxy`` (Agent-lightning's LLMProxy without
token instrumentation: a ``litellm_request`` span with a ``raw_gen_ai_request`` child whose
``llm.hosted_vllm.*`` attributes are stringified Python values).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentlightning.types import Span, TraceStatus

from agl_tinker import spans as S

Writer = Literal["agl", "client", "proxy"]
TRACE_ID = "0" * 31 + "1"


@dataclass(frozen=True)
class CallSpec:
    prompt: list[int]
    response: list[int]
    logprobs: list[float] | None
    start: float
    end: float
    response_id: str
    model: str = "policy"
    finish_reason: str = "stop"
    weights_version: int = 0
    messages: list[dict[str, Any]] | None = None
    prefix_length: int | None = None
    drop_prompt_ids: bool = False
    drop_response_ids: bool = False
    agent_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def span(
    name: str,
    attributes: dict[str, Any],
    *,
    span_id: str,
    rollout_id: str,
    attempt_id: str,
    sequence_id: int,
    start: float | None,
    end: float | None,
    parent_id: str | None = None,
    status: str = "OK",
) -> Span:
    return Span.from_attributes(
        attributes=attributes,
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        name=name,
        trace_id=TRACE_ID,
        span_id=span_id,
        parent_id=parent_id,
        start_time=start,
        end_time=end,
        status=TraceStatus(status_code=status),
    )


def call_spans(
    call: CallSpec,
    writer: Writer,
    *,
    span_id: str,
    rollout_id: str,
    attempt_id: str,
    sequence_id: int,
    parent_id: str | None = None,
) -> list[Span]:
    """The spans one call leaves in the store for the given writer."""
    common: dict[str, Any] = dict(
        rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=sequence_id, start=call.start, end=call.end
    )
    if writer == "agl":
        attrs = S.llm_call_attributes(
            prompt_token_ids=call.prompt,
            response_token_ids=call.response,
            logprobs=call.logprobs,
            response_id=call.response_id,
            model=call.model,
            finish_reason=call.finish_reason,
            weights_version=call.weights_version,
            messages=call.messages,
            prefix_length=call.prefix_length,
            agent_name=call.agent_name,
        )
        if call.drop_prompt_ids:
            del attrs[S.PROMPT_TOKEN_IDS]
        if call.drop_response_ids:
            del attrs[S.RESPONSE_TOKEN_IDS]
        attrs.update(call.extra)
        return [span(S.LLM_CALL_SPAN_NAME, attrs, span_id=span_id, parent_id=parent_id, **common)]
    if writer == "client":
        attrs = {
            S.RESPONSE_ID: call.response_id,
            S.REQUEST_MODEL: call.model,
            S.RESPONSE_MODEL: call.model,
            S.COMPLETION_FINISH_REASON: call.finish_reason,
            "gen_ai.completion.0.role": "assistant",
        }
        if not call.drop_prompt_ids:
            attrs[S.PROMPT_TOKEN_IDS] = list(call.prompt)
        if not call.drop_response_ids:
            attrs[S.RESPONSE_TOKEN_IDS] = list(call.response)
        if call.logprobs is not None:
            attrs[S.CLIENT_LOGPROBS] = json.dumps(
                [
                    {"token": f"t{t}", "logprob": lp, "bytes": None, "top_logprobs": []}
                    for t, lp in zip(call.response, call.logprobs, strict=False)
                ]
            )
        for i, m in enumerate(call.messages or []):
            attrs[f"gen_ai.prompt.{i}.role"] = m["role"]
            attrs[f"gen_ai.prompt.{i}.content"] = m["content"]
        attrs.update(call.extra)
        return [span(S.CLIENT_LLM_CALL_SPAN_NAME, attrs, span_id=span_id, parent_id=parent_id, **common)]
    # LLMProxy: the per-call span has the gen_ai.* metadata, its raw child the provider payload.
    outer = {
        S.RESPONSE_ID: call.response_id,
        S.REQUEST_MODEL: call.model,
        S.FINISH_REASONS: json.dumps([call.finish_reason]),
    }
    choice: dict[str, Any] = {"index": 0, "finish_reason": call.finish_reason}
    if not call.drop_response_ids:
        choice["token_ids"] = list(call.response)
    if call.logprobs is not None:
        choice["logprobs"] = {
            "content": [
                {"token": f"t{t}", "logprob": lp} for t, lp in zip(call.response, call.logprobs, strict=False)
            ]
        }
    raw: dict[str, Any] = {
        "llm.hosted_vllm.id": call.response_id,
        "llm.hosted_vllm.choices": str([choice]),
    }
    if not call.drop_prompt_ids:
        raw["llm.hosted_vllm.prompt_token_ids"] = str(list(call.prompt))
    return [
        span(S.LLM_CALL_SPAN_NAME, outer, span_id=span_id, parent_id=parent_id, **common),
        span(S.RAW_LLM_CALL_SPAN_NAME, raw, span_id=span_id[:-1] + "r", parent_id=span_id, **common),
    ]


def reward_span(
    value: float,
    t: float,
    *,
    span_id: str,
    rollout_id: str,
    attempt_id: str,
    sequence_id: int,
    parent_id: str | None = None,
) -> Span:
    return span(
        S.REWARD_SPAN_NAME,
        S.reward_attributes(value),
        span_id=span_id,
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        start=t,
        end=t,
        parent_id=parent_id,
    )


def agent_span(
    name: str, start: float, end: float, *, span_id: str, rollout_id: str, attempt_id: str, sequence_id: int
) -> Span:
    return span(
        "agent.run",
        {"agent.name": name},
        span_id=span_id,
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        start=start,
        end=end,
    )


def span_id(n: int, kind: str = "c") -> str:
    """16 hex-ish chars, unique per (n, kind); the last char is free for the raw proxy child."""
    return f"{kind}{n:014d}0"


def conversation(
    n_calls: int,
    *,
    first_prompt: int = 200,
    answer: int = 50,
    turn_obs: int = 20,
    writer: Writer = "agl",
    rollout_id: str = "ro-1",
    attempt_id: str = "at-1",
    final_reward: float | None = 1.0,
    with_messages: bool = False,
) -> tuple[list[CallSpec], list[Span]]:
    """A drift-free growing conversation (realistic sizes) and its spans, with one final reward."""
    calls: list[CallSpec] = []
    prompt = [(7 * i + 3) % 150_000 for i in range(first_prompt)]
    t = 1000.0
    prev_full: int | None = None
    messages: list[dict[str, Any]] = [{"role": "system", "content": "x"}, {"role": "user", "content": "q"}]
    for k in range(n_calls):
        response = [(k * 131 + j * 17 + 5) % 150_000 for j in range(answer)]
        calls.append(
            CallSpec(
                prompt=prompt,
                response=response,
                logprobs=[-0.01 * ((j % 7) + 1) for j in range(answer)],
                start=t,
                end=t + 0.5,
                response_id=f"chatcmpl-{k}",
                prefix_length=prev_full,
                messages=list(messages) if with_messages else None,
            )
        )
        t += 1.0
        prev_full = len(prompt) + len(response)
        obs = [(k * 37 + j * 11 + 9) % 150_000 for j in range(turn_obs)]
        prompt = prompt + response + obs
        messages += [{"role": "assistant", "content": f"a{k}"}, {"role": "user", "content": f"o{k}"}]
    out: list[Span] = []
    seq = 1
    for k, c in enumerate(calls):
        out += call_spans(
            c, writer, span_id=span_id(k), rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq
        )
        seq += 1
    if final_reward is not None:
        out.append(
            reward_span(
                final_reward,
                t,
                span_id=span_id(0, "r"),
                rollout_id=rollout_id,
                attempt_id=attempt_id,
                sequence_id=seq,
            )
        )
    return calls, out


def tokens_of(spans: Sequence[Span]) -> int:
    return sum(len(s.attributes.get(S.RESPONSE_TOKEN_IDS, ())) for s in spans)  # type: ignore[arg-type]
