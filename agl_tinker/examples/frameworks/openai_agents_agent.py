"""An OpenAI Agents SDK agent with a function tool and a handoff: nothing in it knows about Tinker.

A ``researcher`` agent may look facts up with the ``lookup`` function tool and hands the question
off to a ``writer`` agent (the SDK's handoff is a tool call, ``transfer_to_writer``) that writes the
final answer. Both run on ``OpenAIChatCompletionsModel`` (chat completions) over an ``AsyncOpenAI``
client whose ``base_url`` is the rollout URL Agent-lightning hands the agent. Each agent sends its
name in an ``X-Agent-Name`` header (``ModelSettings.extra_headers``), which the endpoint records
so training can select calls by agent (``TrainConfig.agent_match``).

The SDK sends the conversation back as chat messages: the researcher's own turns (tool call,
tool result) extend one token sequence; the writer starts from its own instructions and tools, so
its first call starts a new sequence, and the drift report says so.
"""

from __future__ import annotations

from typing import Any

import agentlightning as agl
from agents import (
    Agent,
    Model,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunConfig,
    Runner,
    function_tool,
)
from agents.exceptions import MaxTurnsExceeded
from agents.items import ModelResponse
from openai import AsyncOpenAI

FACTS = {
    "elephant": "The elephant is a large grey land mammal with a trunk.",
    "tiger": "The tiger is a large striped wild cat.",
    "guitar": "The guitar is a string instrument with six strings and a hollow body.",
}
TASKS: list[dict[str, Any]] = [
    {"question": f"What does the {name} look like?", "expected": name} for name in FACTS
]


@function_tool
def lookup(query: str) -> str:
    """Look up short facts about animals and objects."""
    hits = [fact for name, fact in FACTS.items() if name in query.lower() or query.lower() in fact.lower()]
    return " ".join(hits) or "No results."


def build_agents(client: AsyncOpenAI, model: str, temperature: float = 1.0, max_tokens: int = 96) -> Agent:
    """The researcher and writer of :func:`team` on chat completions over ``client``."""
    return team(OpenAIChatCompletionsModel(model=model, openai_client=client), temperature, max_tokens)


def team(model: str | Model, temperature: float = 1.0, max_tokens: int = 96) -> Agent:
    """The researcher (tool + handoff) and the writer it hands off to, both on ``model`` (a model
    object, or a name the run's model provider resolves); returns the starting agent."""

    def settings(name: str) -> ModelSettings:
        return ModelSettings(
            temperature=temperature, max_tokens=max_tokens, extra_headers={"X-Agent-Name": name}
        )

    writer = Agent(
        name="writer",
        instructions="You write the final answer, naming the object in one short sentence.",
        model=model,
        model_settings=settings("writer"),
    )
    return Agent(
        name="researcher",
        instructions="You help users. Use the lookup tool to find facts, then hand off to the writer.",
        tools=[lookup],
        handoffs=[writer],
        model=model,
        model_settings=settings("researcher"),
    )


async def run_agent(client: AsyncOpenAI, model: str, question: str, max_turns: int = 6) -> tuple[str, int]:
    """Run the agents on ``question``; return the final answer and how many model calls were made
    (see :func:`run_team`)."""
    return await run_team(build_agents(client, model), question, max_turns, RunConfig(tracing_disabled=True))


async def run_team(start: Agent, question: str, max_turns: int, run_config: RunConfig) -> tuple[str, int]:
    """Run from ``start`` on ``question``; return the final answer and how many model calls were made.

    A run that exceeds ``max_turns`` ends with an empty answer (the SDK raises ``MaxTurnsExceeded``).
    """
    try:
        result = await Runner.run(start, question, max_turns=max_turns, run_config=run_config)
    except MaxTurnsExceeded as exc:
        data = exc.run_data
        return "", len(data.raw_responses) if data is not None else max_turns
    responses: list[ModelResponse] = list(result.raw_responses)
    return str(result.final_output or ""), len(responses)


def client_for(llm: agl.LLM) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=llm.get_base_url(), api_key=llm.api_key or "unused", max_retries=0)


async def openai_agents_rollout(task: dict[str, Any], llm: agl.LLM) -> float:
    """Reward 1 when the final answer mentions the expected word."""
    answer, _ = await run_agent(client_for(llm), llm.model, task["question"])
    return 1.0 if task["expected"].lower() in answer.lower() else 0.0


openai_agents_agent = agl.rollout(openai_agents_rollout)
