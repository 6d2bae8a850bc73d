"""A LangGraph ReAct graph with a tool: nothing in it knows about Tinker, tokens or training.

The usual two-node graph: ``agent`` (a ``ChatOpenAI`` model with the tool bound) and ``tools``
(LangGraph's ``ToolNode``), joined by ``tools_condition``: the model is called, any tool calls
it made are run and their results appended as tool messages, and the model is called again until
it answers without a tool call. ``ChatOpenAI``'s ``base_url`` is the rollout URL Agent-lightning
hands the agent; its ``default_headers`` name the agent to the endpoint (``X-Agent-Name``).
LangGraph keeps the conversation as messages and sends it back as it was, so a whole episode is
one token sequence.
"""

from __future__ import annotations

from typing import Any

import agentlightning as agl
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

FACTS = {
    "elephant": "The elephant is a large grey land mammal with a trunk.",
    "tiger": "The tiger is a large striped wild cat.",
    "guitar": "The guitar is a string instrument with six strings and a hollow body.",
}
TASKS: list[dict[str, Any]] = [
    {"question": f"What does the {name} look like? Name the object.", "expected": name} for name in FACTS
]
SYSTEM = "You help users. Use the search tool to find facts."


@tool
def search(query: str) -> str:
    """Look up short facts about animals and objects."""
    hits = [fact for name, fact in FACTS.items() if name in query.lower() or query.lower() in fact.lower()]
    return " ".join(hits) or "No results."


def build_graph(model: ChatOpenAI) -> CompiledStateGraph[Any, Any, Any, Any]:
    """agent -> (tools -> agent)* -> end, the ReAct loop as a LangGraph state graph."""
    bound = model.bind_tools([search])

    async def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([search]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    graph.add_edge("agent", END)
    return graph.compile()


def chat_model(llm: agl.LLM, **kwargs: Any) -> ChatOpenAI:
    sampling = dict(llm.sampling_parameters or {})
    return ChatOpenAI(
        model=llm.model,
        base_url=llm.get_base_url(),
        api_key=llm.api_key or "unused",  # type: ignore[arg-type]
        temperature=float(sampling.get("temperature", 1.0)),
        max_completion_tokens=int(sampling.get("max_tokens", 96)),
        max_retries=0,
        default_headers={"X-Agent-Name": "react"},
        **kwargs,
    )


async def run_agent(model: ChatOpenAI, question: str, max_steps: int = 8) -> tuple[str, list[BaseMessage]]:
    """Run the graph on ``question``; the final answer and every message of the episode.

    ``max_steps`` bounds the graph's super-steps (LangGraph's ``recursion_limit``); a run that hits
    it ends with an empty answer and the messages so far.
    """
    from langgraph.errors import GraphRecursionError

    history: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage(question)]
    try:
        async for state in build_graph(model).astream(
            {"messages": history}, {"recursion_limit": max_steps}, stream_mode="values"
        ):
            history = list(state["messages"])
    except GraphRecursionError:
        return "", history
    last = history[-1]
    return (str(last.content) if isinstance(last, AIMessage) and not last.tool_calls else ""), history


async def langgraph_rollout(task: dict[str, Any], llm: agl.LLM) -> float:
    """Reward 1 when the final answer mentions the expected word."""
    answer, _ = await run_agent(chat_model(llm), task["question"])
    return 1.0 if task["expected"].lower() in answer.lower() else 0.0


langgraph_agent = agl.rollout(langgraph_rollout)
