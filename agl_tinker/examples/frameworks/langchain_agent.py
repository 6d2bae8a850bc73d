"""A LangChain agent with a tool: nothing in it knows about Tinker, tokens or training.

``ChatOpenAI`` speaks the OpenAI chat API, so pointing its ``base_url`` at the rollout URL
Agent-lightning hands the agent is all it takes; the endpoint records token ids, logprobs and
tool calls for every turn exactly as it does for raw ``openai`` calls.
"""

from __future__ import annotations

from typing import Any

import agentlightning as agl
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

FACTS = {
    "elephant": "The elephant is a large grey land mammal with a trunk.",
    "eagle": "The eagle is a large bird of prey with keen eyesight.",
    "violin": "The violin is a small string instrument played with a bow.",
}


@tool
def search(query: str) -> str:
    """Look up short facts about animals and objects."""
    hits = [fact for name, fact in FACTS.items() if name in query.lower() or query.lower() in fact.lower()]
    return " ".join(hits) or "No results."


async def run_agent(llm: ChatOpenAI, question: str, max_turns: int = 4) -> tuple[str, list[BaseMessage]]:
    """The usual LangChain tool loop: call the model, run the tools it asks for, repeat."""
    model = llm.bind_tools([search])
    messages: list[BaseMessage] = [
        SystemMessage("You answer questions. Use the search tool when you need facts."),
        HumanMessage(question),
    ]
    for _ in range(max_turns):
        reply = await model.ainvoke(messages)
        messages.append(reply)
        tool_calls = getattr(reply, "tool_calls", None) or []
        if not tool_calls:
            return str(reply.content), messages
        for call in tool_calls:
            result = search.invoke(call["args"])
            messages.append(ToolMessage(content=str(result), tool_call_id=call["id"]))
    return "", messages


def chat_model(llm: agl.LLM, **kwargs: Any) -> ChatOpenAI:
    sampling = dict(llm.sampling_parameters or {})
    return ChatOpenAI(
        model=llm.model,
        base_url=llm.get_base_url(),
        api_key=llm.api_key or "unused",  # type: ignore[arg-type]
        temperature=float(sampling.get("temperature", 1.0)),
        max_retries=0,
        **kwargs,
    )


async def langchain_rollout(task: dict[str, Any], llm: agl.LLM) -> float:
    """Reward 1 when the final answer mentions the expected word."""
    answer, _ = await run_agent(chat_model(llm), task["question"])
    return 1.0 if task["expected"].lower() in answer.lower() else 0.0


langchain_agent = agl.rollout(langchain_rollout)
