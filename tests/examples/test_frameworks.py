"""A LangChain agent trains through the same endpoint unchanged: tool calls and token ids recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from langchain_core.messages import AIMessage, ToolMessage

from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.core.trajectory import rollout_trajectory
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint
from agl_tinker.examples.frameworks.langchain_agent import chat_model, run_agent

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[tuple[Endpoint, Any]]:
    sampler = service_client().create_sampling_client(base_model=MODEL).result()
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(default_max_tokens=96),
        store=store,
        sampling_client=sampler,
        base_model=MODEL,
        tokenizer=get_tokenizer(MODEL),
    )
    yield endpoint, store
    await endpoint.stop()


async def test_langchain_agent_tool_calls_and_tokens_are_recorded(served: tuple[Endpoint, Any]) -> None:
    endpoint, store = served
    tokenizer = get_tokenizer(MODEL)
    for seed in range(12):
        rollout = await store.start_rollout(input={"seed": seed})
        llm = endpoint.as_resource(rollout.rollout_id, rollout.attempt.attempt_id)
        _, messages = await run_agent(chat_model(llm, seed=seed), "What does an elephant look like?")
        if any(isinstance(m, ToolMessage) for m in messages):
            break
    else:
        pytest.fail("the simulator never called the declared tool in 12 seeded LangChain runs")

    tool_turn = next(m for m in messages if isinstance(m, AIMessage) and m.tool_calls)
    assert tool_turn.tool_calls[0]["name"] == "search"
    await endpoint.flush()
    spans = await store.query_spans(rollout.rollout_id)
    rec = reconstruct(spans)
    n_model_turns = sum(isinstance(m, AIMessage) for m in messages)
    assert len(rec.calls) == n_model_turns >= 2
    for call in rec.calls:
        assert call.trainable, call.problem
        assert call.response_token_ids and len(call.logprobs or []) == len(call.response_token_ids)
    assert rec.calls[0].finish_reason == "tool_calls"
    completion = rec.calls[0].completion
    assert completion is not None and completion["tool_calls"][0]["function"]["name"] == "search"
    # The tool round trip stays one token sequence (token-in-token-out), with no drift.
    traj = rollout_trajectory(spans, status=None, decode=tokenizer.decode)
    assert len(traj.alignment.sequences) == 1
    assert not traj.alignment.drift
