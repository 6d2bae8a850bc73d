"""20 Questions end to end: real games through the project's OpenAI-compatible endpoint.

The endpoint serves the simulated base model (``agl_tinker.backend.service_client()``), whose prior
asks generic yes/no questions, guesses nouns it has seen, and calls a declared tool; so over a few
seeded games with search on, some turns must be tool calls and the games must be multi-turn. The
agent reaches the endpoint only through ``openai.AsyncOpenAI``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import agentlightning as agl
import pytest
import pytest_asyncio
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from openai import AsyncOpenAI

from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint
from agl_tinker.examples.q20.agent import GameResult, game_reward, play_game, q20_agent, q20_rollout
from agl_tinker.examples.q20.evaluate import evaluate, load_dataset

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
SEEDS = range(4)
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[tuple[Endpoint, Any]]:
    future = service_client(latency_s=0.0).create_sampling_client(base_model=MODEL)
    sampler = future.result() if hasattr(future, "result") else future
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(
            max_context_tokens=8192, default_max_tokens=128, sampling_parameters={"temperature": 1.0}
        ),
        store=store,
        sampling_client=sampler,
        base_model=MODEL,
        tokenizer=get_tokenizer(MODEL),
    )
    yield endpoint, store
    await endpoint.stop()


def check_transcript(result: GameResult) -> None:
    """The conversation is well formed and agrees with the counts and the reward."""
    messages = result.messages
    assert [m["role"] for m in messages[:2]] == ["system", "user"]
    assistants = [m for m in messages if m["role"] == "assistant"]
    assert len(assistants) == result.model_calls
    call_ids = [c["id"] for m in assistants for c in m.get("tool_calls", [])]
    tool_ids = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert tool_ids == call_ids, "every tool call is answered, in order, by its id"
    assert len(call_ids) == result.tool_calls + result.refused_tool_calls
    questions = [m for m in assistants if not m.get("tool_calls")]
    assert len(questions) + result.refused_tool_calls == result.turns
    assert result.reward == game_reward(result.won, result.turns)
    assert result.won == (result.end_reason == "correct") == (messages[-1]["content"].startswith("Correct!"))
    if not result.won:
        assert result.turns >= 20


async def test_games_with_search_are_multi_turn_and_use_the_tool(served: tuple[Endpoint, Any]) -> None:
    endpoint, _ = served
    task = {"category": "animal", "answer": "dog", "search_enabled": True}
    async with AsyncOpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0) as client:
        results = [await play_game(client, endpoint.model_name, task, seed=1000 * s) for s in SEEDS]
    for result in results:
        check_transcript(result)
        assert result.model_calls >= 2
    assert sum(r.tool_calls for r in results) > 0, "the base model calls a declared tool at least sometimes"
    searched = [m["content"] for r in results for m in r.messages if m["role"] == "tool"]
    assert any("(animal)" in text or text.startswith("No results") for text in searched)


async def test_seeded_games_replay_exactly(served: tuple[Endpoint, Any]) -> None:
    endpoint, _ = served
    task = {"category": "food", "answer": "apple", "search_enabled": "true"}
    async with AsyncOpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0) as client:
        first = await play_game(client, endpoint.model_name, task, seed=5)
        second = await play_game(client, endpoint.model_name, task, seed=5)
    assert [(m["role"], m["content"]) for m in first.messages] == [
        (m["role"], m["content"]) for m in second.messages
    ]


async def test_rollout_reward_and_recorded_calls(served: tuple[Endpoint, Any]) -> None:
    """Through a rollout-attributed URL: every model call is stored, and each extends the last."""
    endpoint, store = served
    attempted = await store.start_rollout(
        input={"category": "animal", "answer": "cat", "search_enabled": True}
    )
    llm = endpoint.as_resource(attempted.rollout_id, attempted.attempt.attempt_id)
    reward = await q20_rollout({"category": "animal", "answer": "cat", "search_enabled": True}, llm)
    assert 0.0 <= reward <= 1.0
    await endpoint.flush()
    calls = reconstruct(await store.query_spans(attempted.rollout_id)).calls
    assert len(calls) >= 2
    for previous, current in itertools.pairwise(calls):
        sampled = [*(previous.prompt_token_ids or ()), *(previous.response_token_ids or ())]
        assert sampled and list(current.prompt_token_ids or ())[: len(sampled)] == sampled, (
            "history replayed verbatim"
        )
    assert isinstance(q20_agent, agl.LitAgent)


async def test_evaluate_writes_one_line_per_game(served: tuple[Endpoint, Any], tmp_path: Path) -> None:
    endpoint, _ = served
    tasks = load_dataset("val")[:4]
    out = tmp_path / "eval.jsonl"
    summary = await evaluate(
        endpoint.url + "/v1", endpoint.model_name, None, tasks, out, concurrency=2, seed=3
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == [0, 1, 2, 3]
    assert all(line["error"] is None for line in lines)
    assert summary.overall.games == 4 and summary.overall.errors == 0
    assert summary.overall.wins == sum(line["won"] for line in lines)
    assert sum(s.games for s in summary.by_category.values()) == 4
    for line in lines:
        assert line["answer"] == tasks[line["index"]]["answer"]
        assert line["reward"] == game_reward(line["won"], line["turns"])


async def test_evaluate_records_failed_games_instead_of_losses(tmp_path: Path) -> None:
    tasks = load_dataset("val")[:2]
    out = tmp_path / "eval.jsonl"
    summary = await evaluate("http://127.0.0.1:9/v1", "m", None, tasks, out, concurrency=2)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and all(line["error"] for line in lines)
    assert (summary.overall.games, summary.overall.errors, summary.overall.win_rate) == (0, 2, 0.0)
