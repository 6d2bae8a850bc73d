"""The OpenAI Agents SDK agent of :mod:`openai_agents_agent`, on the SDK's default model provider.

Nothing here picks a model class: each ``Agent`` names its model as a plain string and the run uses
the SDK's default provider (``MultiProvider``, which serves OpenAI names with
``OpenAIResponsesModel``: the Responses API, ``POST /v1/responses``), given an ``AsyncOpenAI``
client whose ``base_url`` is the rollout URL. The model name is the endpoint's slash-free alias
(``Qwen3-4B-Instruct-2507`` for ``Qwen/Qwen3-4B-Instruct-2507``): the default provider reads a
``/`` as a provider prefix and refuses ``Qwen/...`` before any request.

The SDK resends the whole history each turn as Responses input items (messages, ``function_call``,
``function_call_output``); the endpoint parses them into the same conversation a chat request
gives, so the researcher's turns extend one token sequence exactly as on chat completions.
"""

from __future__ import annotations

from typing import Any

import agentlightning as agl
from agents import Agent, RunConfig
from agents.models.multi_provider import MultiProvider
from openai import AsyncOpenAI

from agl_tinker.examples.frameworks.openai_agents_agent import TASKS, client_for, run_team, team

__all__ = ["TASKS", "openai_agents_responses_agent", "plain_model_name", "run_agent"]


def plain_model_name(model: str) -> str:
    """The endpoint's slash-free alias of ``model``."""
    return model.rsplit("/", 1)[-1]


def build_agents(model: str, temperature: float = 1.0, max_tokens: int = 96) -> Agent:
    """The researcher (tool + handoff) and the writer of :func:`team`, naming their model by a plain string."""
    return team(model, temperature, max_tokens)


async def run_agent(client: AsyncOpenAI, model: str, question: str, max_turns: int = 6) -> tuple[str, int]:
    """Run the agents on ``question`` through the default provider; return the answer and the model calls."""
    config = RunConfig(model_provider=MultiProvider(openai_client=client), tracing_disabled=True)
    return await run_team(build_agents(plain_model_name(model)), question, max_turns, config)


async def openai_agents_responses_rollout(task: dict[str, Any], llm: agl.LLM) -> float:
    """Reward 1 when the final answer mentions the expected word."""
    answer, _ = await run_agent(client_for(llm), llm.model, task["question"])
    return 1.0 if task["expected"].lower() in answer.lower() else 0.0


openai_agents_responses_agent = agl.rollout(openai_agents_responses_rollout)
