"""A tool-using agent on the ``anthropic`` SDK (Messages API): nothing in it knows about Tinker.

It answers a question with a ``lookup`` tool in the usual Messages loop: ask with ``tools``; while
the answer stops for ``tool_use``, run each tool and send the results back as ``tool_result``
blocks; the last text is the answer. The client's ``base_url`` is the rollout URL without ``/v1``
(what ``ANTHROPIC_BASE_URL`` would hold); the model is the endpoint's slash-free alias. The history
goes back as Anthropic content blocks, which the endpoint parses into the same conversation a chat
request gives, so one episode is one token sequence.
"""

from __future__ import annotations

from typing import Any

import agentlightning as agl
import anthropic
from anthropic.types import MessageParam, ToolParam

from agl_tinker.examples.frameworks.openai_agents_agent import FACTS, TASKS

__all__ = ["TASKS", "anthropic_agent", "client_for", "run_agent"]

LOOKUP_TOOL: ToolParam = {
    "name": "lookup",
    "description": "Look up short facts about animals and objects.",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}
SYSTEM = (
    "You help users. Use the lookup tool to find facts, then answer in one short sentence naming the object."
)


def lookup(query: object) -> str:
    text = str(query).lower()
    hits = [fact for name, fact in FACTS.items() if name in text or text in fact.lower()]
    return " ".join(hits) or "No results."


def client_for(llm: agl.LLM) -> anthropic.AsyncAnthropic:
    """An Anthropic client on the rollout URL (the SDK adds ``/v1/messages``)."""
    base = llm.get_base_url().removesuffix("/").removesuffix("/v1")
    return anthropic.AsyncAnthropic(base_url=base, api_key=llm.api_key or "unused", max_retries=0)


async def run_agent(
    client: anthropic.AsyncAnthropic, model: str, question: str, max_turns: int = 4, max_tokens: int = 96
) -> tuple[str, int]:
    """The Messages tool loop on ``question``; returns the final text and the number of model calls."""
    messages: list[MessageParam] = [{"role": "user", "content": question}]
    for turn in range(1, max_turns + 1):
        answer = await client.messages.create(
            model=model.rsplit("/", 1)[-1],
            max_tokens=max_tokens,
            system=SYSTEM,
            tools=[LOOKUP_TOOL],
            messages=messages,
        )
        uses = [block for block in answer.content if block.type == "tool_use"]
        if answer.stop_reason != "tool_use" or not uses:
            return "".join(block.text for block in answer.content if block.type == "text"), turn
        messages.append({"role": "assistant", "content": answer.content})
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "content": lookup(use.input.get("query", "")),
                    }
                    for use in uses
                ],
            }
        )
    return "", max_turns


async def anthropic_rollout(task: dict[str, Any], llm: agl.LLM) -> float:
    """Reward 1 when the final answer mentions the expected word."""
    answer, _ = await run_agent(client_for(llm), llm.model, task["question"])
    return 1.0 if task["expected"].lower() in answer.lower() else 0.0


anthropic_agent = agl.rollout(anthropic_rollout)
