"""Agents on the other two APIs train unchanged (issue 32): the OpenAI Agents SDK on its default
provider (Responses API) and a tool-using ``anthropic``-SDK agent (Messages API)."""

from __future__ import annotations

from pathlib import Path

import agentlightning as agl
import pytest
from framework_checks import (
    Episode,
    RunEpisode,
    check_episode,
    episodes_until,
    sequence_report,
    served_endpoint,
    tool_round_trip,
    train_few_steps,
)

from agl_tinker import spans as S
from agl_tinker.examples.frameworks import anthropic_agent as claude
from agl_tinker.examples.frameworks import openai_agents_responses as responses
from agl_tinker.examples.frameworks.openai_agents_agent import client_for

pytestmark = pytest.mark.slow


async def _responses_episode(llm: agl.LLM, seed: int) -> int:
    task = responses.TASKS[seed % len(responses.TASKS)]
    _, calls = await responses.run_agent(client_for(llm), llm.model, task["question"])
    return calls


async def _anthropic_episode(llm: agl.LLM, seed: int) -> int:
    task = claude.TASKS[seed % len(claude.TASKS)]
    _, calls = await claude.run_agent(claude.client_for(llm), llm.model, task["question"])
    return calls


async def _lookup_episodes(run: RunEpisode, api: str) -> tuple[Episode, list[Episode]]:
    """Seeded episodes of ``run`` until one round-trips the ``lookup`` tool; asserts each episode's
    contract and that every call went through ``api``. Returns (that episode, every episode run)."""
    async with served_endpoint() as served:
        (looked_up,), episodes = await episodes_until(served, run, lambda e: tool_round_trip(e, "lookup"))
    for episode in episodes:
        check_episode(episode)
        assert all(c.attributes[S.AGL_API] == api for c in episode.calls)
    return looked_up, episodes


async def test_agents_sdk_default_provider_speaks_responses_and_keeps_the_researcher_one_sequence() -> None:
    looked_up, episodes = await _lookup_episodes(_responses_episode, "responses")
    researcher = [c.index for c in looked_up.calls if c.agent_name == "researcher"]
    assert len(researcher) >= 2
    assert not [d for d in looked_up.trajectory.alignment.drift if d.call_index in researcher[1:]]
    print("openai-agents (responses)", sequence_report(episodes))


async def test_anthropic_tool_agent_episode_is_one_sequence() -> None:
    looked_up, episodes = await _lookup_episodes(_anthropic_episode, "messages")
    assert len(looked_up.calls) >= 2
    assert len(looked_up.trajectory.alignment.sequences) == 1 and not looked_up.trajectory.alignment.drift
    print("anthropic", sequence_report(episodes))


def test_anthropic_agent_trains_one_step(tmp_path: Path) -> None:
    """(The Agents SDK on Responses trains the same way; its run costs ~90 s here, so CI trains
    the Responses API through Codex CLI's episode instead: tests/examples/test_harnesses.py.)"""
    train_few_steps(claude.anthropic_agent, claude.TASKS[:2], tmp_path / "run", steps=1, group_size=2)
