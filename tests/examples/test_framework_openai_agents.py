"""The OpenAI Agents SDK (function tool + handoff, chat completions) trains unchanged through the endpoint."""

from __future__ import annotations

from pathlib import Path

import agentlightning as agl
import pytest
from framework_checks import (
    Episode,
    check_episode,
    episodes_until,
    sequence_report,
    served_endpoint,
    tool_round_trip,
    train_few_steps,
)

from agl_tinker.examples.frameworks.openai_agents_agent import (
    TASKS,
    client_for,
    openai_agents_agent,
    run_agent,
)

pytestmark = pytest.mark.slow


async def _episode(llm: agl.LLM, seed: int) -> int:
    task = TASKS[seed % len(TASKS)]
    _, model_calls = await run_agent(client_for(llm), llm.model, task["question"])
    return model_calls


def _handed_off(episode: Episode) -> bool:
    return any(c.agent_name == "writer" for c in episode.calls)


async def test_tool_and_handoff_calls_are_recorded_and_drift_is_explained() -> None:
    async with served_endpoint() as served:
        (looked_up, handoff), episodes = await episodes_until(
            served, _episode, lambda e: tool_round_trip(e, "lookup"), _handed_off
        )
    for episode in episodes:
        check_episode(episode)
    # The researcher's own turns (tool call, tool result, next call) extend one token sequence:
    # the SDK sends that history back verbatim.
    researcher = [c.index for c in looked_up.calls if c.agent_name == "researcher"]
    assert len(researcher) >= 2
    assert not [d for d in looked_up.trajectory.alignment.drift if d.call_index in researcher[1:]]
    # The handoff switches to the writer's own instructions: a new sequence, reported as drift at
    # the system prompt, with the text that differs.
    names = [c.agent_name for c in handoff.calls]
    assert names[0] == "researcher"
    first_writer = names.index("writer")
    drift = handoff.trajectory.alignment.drift
    assert any(d.call_index == first_writer and "final answer" in d.actual_text for d in drift), drift
    print("openai-agents", sequence_report(episodes))


def test_trains_a_few_steps(tmp_path: Path) -> None:
    result = train_few_steps(openai_agents_agent, TASKS, tmp_path / "run")
    assert any(s["tools/agent/researcher/offered_episodes"] > 0 for s in result.steps)
