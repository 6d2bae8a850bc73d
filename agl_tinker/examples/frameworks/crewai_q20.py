"""The 20 Questions player as a CrewAI agent with the search tool, as the reference integration had it.

Each turn is one ``Agent.kickoff_async``: the ``player`` agent (with the ``search`` tool when the game
offers it) gets the game so far and answers with its next question; the answerer
(:mod:`agl_tinker.examples.q20.answerer`, offline by default) replies yes / no / correct. The player's ``LLM``
is CrewAI's native OpenAI provider (chat completions) pointed at the rollout URL Agent-lightning
hands the agent, naming the agent in an ``X-Agent-Name`` header. Nothing here knows about Tinker.

CrewAI 1.6 (the newest release that installs next to Agent-lightning 0.3.0, see the README) calls
tools in its text ReAct format, not through OpenAI ``tools``: the model writes ``Action: search``
and ``Action Input: {...}``, CrewAI runs the tool and sends the answer back with
``Observation: <result>`` appended to it. That rewritten assistant message is not what was
sampled, so the next call starts a new token sequence, and the drift report says where. Each new
turn is a new kickoff whose prompt restates the game: a new sequence too.

The agent is kicked off directly rather than through a ``Crew`` + ``Task``: CrewAI 1.6's console
listener makes every ``TaskStartedEvent`` handler wait 5 s for a console tree that only exists with
``verbose=True``, and those waits pile up until the process that ran the crews can exit.
"""

from __future__ import annotations

import os
from typing import Any

import agentlightning as agl
from pydantic import BaseModel, Field

# CrewAI's own telemetry and trace prompts reach for the network; training runs offline.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import LLM, Agent  # after the telemetry switches above
from crewai.events.event_listener import event_listener
from crewai.tools import BaseTool

from agl_tinker.examples.q20.agent import game_reward, opening, parse_task, question_text
from agl_tinker.examples.q20.answerer import Answerer, OfflineAnswerer
from agl_tinker.examples.q20.search import search_knowledge

# What ``Crew(verbose=False)`` sets at each kickoff; a bare agent kickoff would print console panels.
event_listener.formatter.verbose = False

MAX_QUESTIONS = 6
"""A short game: the framework tests play a few of them per step."""

TASKS: list[dict[str, Any]] = [
    {"category": "animal", "answer": "elephant", "search_enabled": True},
    {"category": "animal", "answer": "tiger", "search_enabled": True},
    {"category": "instrument", "answer": "guitar", "search_enabled": True},
]


class SearchArgs(BaseModel):
    query: str = Field(description="keywords, e.g. 'large grey animal'")


class SearchTool(BaseTool):
    """The 20 Questions encyclopedia (:func:`agl_tinker.examples.q20.search.search_knowledge`) as a CrewAI tool."""

    name: str = "search"
    description: str = (
        "Search an encyclopedia of things, places, foods, animals, jobs and instruments. "
        "Returns matching names with short facts about each."
    )
    args_schema: type[BaseModel] = SearchArgs

    def _run(self, query: str) -> str:
        return search_knowledge(query)


def player_llm(llm: agl.LLM, max_tokens: int = 96) -> LLM:
    sampling = dict(llm.sampling_parameters or {})
    return LLM(  # provider="openai": CrewAI's native OpenAI client for a model name it does not know
        model=llm.model,
        provider="openai",
        base_url=llm.get_base_url(),
        api_key=llm.api_key or "unused",
        temperature=float(sampling.get("temperature", 1.0)),
        max_tokens=int(sampling.get("max_tokens", max_tokens)),
        max_retries=0,
        default_headers={"X-Agent-Name": "player"},
    )


def player_agent(model: LLM, search_enabled: bool) -> Agent:
    """The player: a CrewAI agent with the search tool when the game offers it."""
    return Agent(
        role="20 Questions player",
        goal="Find the secret thing with as few yes/no questions as possible.",
        backstory=(
            "You play 20 Questions: ask one yes/no question per turn, or guess by asking whether it is a thing you name."
            + (" You may call the search tool to find candidates." if search_enabled else "")
        ),
        llm=model,
        tools=[SearchTool()] if search_enabled else [],
        max_iter=3,
        verbose=False,
        allow_delegation=False,
    )


async def play_game(
    llm: agl.LLM,
    task: dict[str, Any],
    *,
    answerer: Answerer | None = None,
    max_questions: int = MAX_QUESTIONS,
) -> tuple[bool, int, int]:
    """Play one game; returns (won, questions asked, model calls CrewAI made)."""
    game = parse_task(task)
    answerer = answerer or OfflineAnswerer()
    model = player_llm(llm)
    player = player_agent(model, game["search_enabled"])
    transcript = opening(game["category"], max_questions)
    model_calls = 0
    for turn in range(1, max_questions + 1):
        output = await player.kickoff_async(f"{transcript}\nAsk your next question.")
        model_calls = model.get_token_usage_summary().successful_requests
        question = question_text(str(output.raw))
        reply = await answerer.answer(question, game["answer"], game["category"])
        if reply == "correct":
            return True, turn, model_calls
        transcript += f"\nYou asked: {question}\nAnswer: {reply}. {max_questions - turn} questions left."
    return False, max_questions, model_calls


async def crewai_q20_rollout(task: dict[str, Any], llm: agl.LLM) -> float:
    """The 20 Questions reward (:func:`agl_tinker.examples.q20.agent.game_reward`) of one CrewAI game."""
    won, turns, _ = await play_game(llm, task)
    return game_reward(won, turns, MAX_QUESTIONS)


crewai_q20_agent = agl.rollout(crewai_q20_rollout)
