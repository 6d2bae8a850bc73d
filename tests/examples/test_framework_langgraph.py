"""A LangGraph ReAct graph with a tool trains unchanged through the endpoint, one token sequence per episode."""

from __future__ import annotations

from pathlib import Path

import agentlightning as agl
import pytest
from framework_checks import (
    check_episode,
    episodes_until,
    sequence_report,
    served_endpoint,
    tool_round_trip,
    train_few_steps,
)
from langchain_core.messages import AIMessage

from agl_tinker.examples.frameworks.langgraph_agent import TASKS, chat_model, langgraph_agent, run_agent

pytestmark = pytest.mark.slow


async def _episode(llm: agl.LLM, seed: int) -> int:
    task = TASKS[seed % len(TASKS)]
    _, messages = await run_agent(chat_model(llm, seed=seed), task["question"])
    return sum(isinstance(m, AIMessage) for m in messages)


async def test_react_graph_tool_round_trip_is_one_sequence() -> None:
    async with served_endpoint() as served:
        (episode,), episodes = await episodes_until(served, _episode, lambda e: tool_round_trip(e, "search"))
    for e in episodes:
        check_episode(e)
        assert {c.agent_name for c in e.calls} == {"react"}
        # LangGraph sends the history back verbatim: every episode is one sequence, no drift.
        assert len(e.trajectory.alignment.sequences) == 1 and not e.trajectory.alignment.drift
    assert len(episode.calls) >= 2 and episode.calls[0].finish_reason == "tool_calls"
    print("langgraph", sequence_report(episodes))


def test_trains_a_few_steps(tmp_path: Path) -> None:
    result = train_few_steps(langgraph_agent, TASKS, tmp_path / "run")
    assert all(s["tools/offered_episodes"] == s["rollouts/total"] for s in result.steps)
    assert all(s["align/drift_events"] == 0 for s in result.steps)
