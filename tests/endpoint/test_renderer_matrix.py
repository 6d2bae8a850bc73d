"""Token-in-token-out and tool calls for every renderer family the simulator serves: with TITO on a
ten-turn episode is one token sequence even when every answer is sampled non-canonically; with it
off the drift is reported; a declared tool is called and parsed in the family's own syntax."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded

from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.core.align import align_calls
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.endpoint.start import EndpointConfig, start_endpoint
from fakes.lineup import CATALOG

FAMILIES = {m.chat_format.name: name for name, m in reversed(CATALOG.items())}
"""One served model per chat format: qwen3_instruct, qwen3 (hybrid thinking), qwen3_5, deepseekv4_1, llama3,
gpt_oss (harmony)."""
REASONING_FAMILIES = sorted(m.chat_format.name for m in CATALOG.values() if m.chat_format.reasoning)
"""The families whose simulated model may write a reasoning message of its own (gpt-oss's analysis)."""
TOOL_FAMILIES = sorted(m.chat_format.name for m in CATALOG.values() if m.chat_format.tool_call != "none")
"""The families whose renderer has tool calls (the cookbook's Llama 3 renderer has none)."""

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]


async def _episode(
    model: str, tito: bool, drift: float, turns: list[dict[str, Any]]
) -> tuple[Any, list[Any], list[str]]:
    """Run ``turns`` (chat.completions kwargs, history appended) through the lean endpoint; returns the
    alignment, the answers and each call's sampled tokens as text."""
    sampler = service_client(drift=drift).create_sampling_client(base_model=model).result()
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(token_in_token_out=tito, default_max_tokens=48),
        store=store,
        sampling_client=sampler,
        base_model=model,
        tokenizer=get_tokenizer(model),
    )
    try:
        attempted = await store.start_rollout(input={"task": "t"})
        llm = endpoint.as_resource(attempted.rollout_id, attempted.attempt.attempt_id)
        client = openai.OpenAI(base_url=llm.endpoint, api_key="not-a-secret", max_retries=0)

        def run() -> list[Any]:
            messages: list[dict[str, Any]] = []
            answers = []
            for turn in turns:
                messages.append({"role": "user", "content": turn["user"]})
                answer = client.chat.completions.create(
                    model=model, messages=messages, **{k: v for k, v in turn.items() if k != "user"}
                )
                message = answer.choices[0].message
                messages.append(message.model_dump(exclude_none=True))
                for call in message.tool_calls or []:
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Paris"})
                answers.append(message)
            return answers

        answers = await asyncio.to_thread(run)
        await endpoint.flush()
        calls = reconstruct(await store.query_spans(attempted.rollout_id)).calls
        alignment = align_calls(calls)
    finally:
        await endpoint.stop()
    sampled = [get_tokenizer(model).decode(list(c.response_token_ids or ())) for c in calls]
    return alignment, answers, sampled


@pytest.mark.parametrize("tito", [True, False])
@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_multi_turn_is_one_sequence_with_tito_and_drift_is_reported_without(
    family: str, tito: bool
) -> None:
    # Seeded turns, as in the tests below: unseeded, the background (free text, ~1e-4 a token) could
    # sample a special token such as Llama 3's <|reserved_special_token_62|> into an answer, which
    # one CI run of this test hit; drift=1.0 still samples every answer non-canonically.
    turns = [{"user": "Let's talk. Say you are Bob.", "seed": 0}] + [
        {"user": f"Turn {i}: go on.", "seed": i + 1} for i in range(3)
    ]
    alignment, answers, _sampled = await _episode(FAMILIES[family], tito, drift=1.0, turns=turns)
    # Thinking families' (empty) think blocks and harmony's channel headers are parsed out of the
    # answer, not shown as text.
    assert all(a.content and "think>" not in a.content and "<|" not in a.content for a in answers), [
        a.content for a in answers
    ]
    if tito:
        assert len(alignment.sequences) == 1 and not alignment.drift
    else:
        assert alignment.drift and len(alignment.sequences) > 1


@pytest.mark.parametrize("family", sorted(set(TOOL_FAMILIES)))
async def test_tool_calls_are_parsed_in_each_family(family: str) -> None:
    # Seeded turns: the simulator's draws are deterministic given the seed, so this cannot flake.
    turns = [
        {"user": "Use the search tool to find the capital of France", "tools": TOOLS, "seed": s}
        for s in range(8)
    ]
    alignment, answers, _sampled = await _episode(FAMILIES[family], True, drift=0.0, turns=turns)
    calls = [call for message in answers for call in message.tool_calls or []]
    assert calls, [m.content for m in answers]
    assert all(c.function.name == "search" and "query" in json.loads(c.function.arguments) for c in calls)
    assert len(alignment.sequences) == 1 and not alignment.drift


@pytest.mark.parametrize("family", sorted(set(REASONING_FAMILIES)))
async def test_reasoning_stays_in_the_sequence_and_out_of_the_answers(family: str) -> None:
    """A reasoning message (harmony's analysis channel) is sampled, kept token for token in the one
    sequence with TITO on, and never shown as the answer's text. Seeded turns: deterministic."""
    reasoning = CATALOG[FAMILIES[family]].chat_format.reasoning
    turns = [{"user": f"Turn {i}: say you are Bob.", "seed": i} for i in range(8)]
    alignment, answers, sampled = await _episode(FAMILIES[family], True, drift=0.0, turns=turns)
    assert any(text.startswith(reasoning) for text in sampled), sampled
    assert len(alignment.sequences) == 1 and not alignment.drift
    thought = reasoning.split("<|message|>")[-1].split("<|")[0]
    assert all(a.content and thought not in a.content and "<|" not in a.content for a in answers)
