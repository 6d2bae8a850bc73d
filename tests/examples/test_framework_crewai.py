"""CrewAI's 20 Questions player (search tool, text ReAct) trains unchanged through the endpoint.

CrewAI 1.6 calls tools in text (``Action:`` / ``Action Input:``) and sends each tool result back
appended to the assistant message it answered (``Observation:``), so the checks differ from the
OpenAI-tools frameworks where CrewAI's protocol does: the tool call is in the recorded completion's
text and its result in the next call's messages; the rewritten message starts a new sequence, and
the drift report points at the end of the sampled answer.
"""

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
    train_few_steps,
)

# CrewAI comes with the frameworks extra, which the dev extra (CI's bootstrap) installs; a venv that
# cannot hold it next to newer openai/pydantic releases (see the README, CrewAI) skips this module.
# (The example is imported first: it switches CrewAI's network telemetry off before CrewAI loads.)
pytest.importorskip(
    "agl_tinker.examples.frameworks.crewai_q20",
    reason="CrewAI is not installed: pip install -e '.[frameworks]'",
)

from agl_tinker.examples.frameworks.crewai_q20 import TASKS, crewai_q20_agent, play_game

pytestmark = pytest.mark.slow


async def _episode(llm: agl.LLM, seed: int) -> int:
    _, _, model_calls = await play_game(llm, TASKS[seed % len(TASKS)], max_questions=3)
    return model_calls


def _searched(episode: Episode) -> bool:
    """A call answered with a search action and a later call's messages carry its observation."""
    calls = list(episode.calls)
    for i, call in enumerate(calls[:-1]):
        content = str((call.completion or {}).get("content") or "")
        if "Action: search" in content:
            later = calls[i + 1].messages or []
            return any("Observation:" in str(m.get("content")) for m in later if m.get("role") == "assistant")
    return False


async def test_crewai_calls_are_recorded_and_tool_observations_explain_the_drift() -> None:
    async with served_endpoint() as served:
        (searched,), episodes = await episodes_until(served, _episode, _searched)
    for episode in episodes:
        check_episode(episode)
        assert {c.agent_name for c in episode.calls} == {"player"}
        # one kickoff per question: at least one sequence per turn, each new one explained
        alignment = episode.trajectory.alignment
        assert len(alignment.sequences) == len(alignment.drift) + 1
    action = next(
        i
        for i, c in enumerate(searched.calls)
        if "Action: search" in str((c.completion or {}).get("content"))
    )
    drift = {d.call_index: d for d in searched.trajectory.alignment.drift}
    # CrewAI appended "Observation: ..." to the answer it sampled: the sequence breaks right after it.
    assert "Observation" in drift[action + 1].actual_text, drift[action + 1]
    print("crewai", sequence_report(episodes))


def test_trains_a_few_steps(tmp_path: Path) -> None:
    result = train_few_steps(crewai_q20_agent, TASKS, tmp_path / "run", steps=2)
    assert all(s["calls/total"] >= 2 * s["rollouts/total"] for s in result.steps)
