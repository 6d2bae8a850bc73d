"""The 20 Questions player: plain OpenAI-client code, multi-turn, with an optional search tool.

Each turn is one ``chat.completions.create`` over the whole conversation. An answer with tool
calls is executed (real OpenAI tool calling: the results go back as ``role="tool"`` messages) and
the model is asked again; an answer without is a question for the answerer, whose reply comes
back as the next user message. Nothing here knows about Tinker, tokens or training.

Budgets: ``max_questions`` questions (guesses included) and ``max_tool_calls`` searches per game.
Searches are free until the search budget is spent; a tool call beyond it, to an unknown tool, or
when search is off, is answered with an explanation and costs a question, so every game ends
within ``max_questions + max_tool_calls`` model calls.

Reward (:func:`game_reward`): 0.0 for a lost game; a win pays 1.0 on the first question and
``0.5 / max_questions`` less for each further question (0.525 on the 20th), so a policy is paid
mostly for winning and a little for winning quickly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict

import agentlightning as agl
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from agl_tinker.examples.q20.answerer import Answerer, answerer_from_env
from agl_tinker.examples.q20.search import SEARCH_TOOL, SearchTool, search_from_env

MAX_QUESTIONS = 20
MAX_TOOL_CALLS = 3
DEFAULT_MAX_TOKENS = 256

EndReason = Literal["correct", "out_of_questions"]


class Q20Task(TypedDict):
    """One game: the secret, its category (told to the player) and whether search is offered."""

    category: str
    answer: str
    search_enabled: bool


_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f", ""})


def as_bool(value: object, name: str = "value") -> bool:
    """``True``/``False`` from a bool or the usual CSV spellings; anything else is a ``ValueError``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def parse_task(task: Mapping[str, Any]) -> Q20Task:
    """A task as the store hands it over (booleans may arrive as strings), checked and typed."""
    missing = [key for key in ("category", "answer") if not str(task.get(key) or "").strip()]
    if missing:
        raise ValueError(f"20 Questions task is missing {', '.join(missing)}: {dict(task)!r}")
    return Q20Task(
        category=str(task["category"]).strip(),
        answer=str(task["answer"]).strip(),
        search_enabled=as_bool(task.get("search_enabled", False), "search_enabled"),
    )


def game_reward(won: bool, turns: int, max_questions: int = MAX_QUESTIONS) -> float:
    """1.0 for a first-question win, ``0.5 / max_questions`` less per extra question, 0.0 for a loss."""
    if not won:
        return 0.0
    return 1.0 - 0.5 * (turns - 1) / max_questions


def system_prompt(
    search_enabled: bool, max_questions: int = MAX_QUESTIONS, max_tool_calls: int = MAX_TOOL_CALLS
) -> str:
    """The rules. Kept free of identity phrasing so a model reads it as a game, not a role."""
    rules = (
        "Let's play 20 Questions. The user is thinking of a secret thing and tells you its category. "
        "Ask one yes/no question per turn; the user answers yes or no. "
        'To guess, ask "Is it <thing>?" naming one thing; you win when you name the secret. '
        f"You have at most {max_questions} questions, guesses included. Reply with your question only."
    )
    if search_enabled:
        rules += (
            f" You may call the search tool (at most {max_tool_calls} times per game) to find candidates "
            "and facts about them; searching does not use up questions."
        )
    return rules


def opening(category: str, max_questions: int = MAX_QUESTIONS) -> str:
    article = "an" if category[:1].lower() in "aeiou" else "a"
    return (
        f"I'm thinking of {article} {category}. You have {max_questions} questions. Ask your first question."
    )


_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


def question_text(content: str) -> str:
    """What the answerer hears: the reply without any reasoning block."""
    return _THINK.sub("", content).strip()


def _query(arguments: str) -> str:
    """The search query from a tool call's JSON arguments, tolerating models that get the shape wrong."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments.strip()
    if isinstance(parsed, dict):
        value = parsed.get("query")
        if value is None:
            value = next((v for v in parsed.values() if isinstance(v, str)), "")
        return str(value).strip()
    return str(parsed).strip()


@dataclass
class GameResult:
    """One finished game: the outcome, what it cost, and the whole conversation."""

    category: str
    answer: str
    search_enabled: bool
    won: bool
    turns: int
    """Questions the answerer heard (the winning guess included), plus refused tool calls; a lost
    game can end past ``max_questions`` when its last answer held several refused calls."""
    tool_calls: int
    """Searches executed."""
    refused_tool_calls: int
    model_calls: int
    reward: float
    end_reason: EndReason
    messages: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def play_game(
    client: AsyncOpenAI,
    model: str,
    task: Mapping[str, Any],
    *,
    answerer: Answerer | None = None,
    search: SearchTool | None = None,
    max_questions: int = MAX_QUESTIONS,
    max_tool_calls: int = MAX_TOOL_CALLS,
    temperature: float = 1.0,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    seed: int | None = None,
) -> GameResult:
    """Play one game against ``answerer`` (default: from the environment, offline unless configured).

    API errors propagate: a game the model could not play is a failed rollout, not a lost one.
    ``seed``, when given, seeds call ``i`` with ``seed + i`` so a game replays exactly.
    """
    game = parse_task(task)
    answerer = answerer or answerer_from_env()
    search = search or search_from_env()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt(game["search_enabled"], max_questions, max_tool_calls)},
        {"role": "user", "content": opening(game["category"], max_questions)},
    ]
    turns = tool_calls = refused = model_calls = 0
    won = False
    while turns < max_questions and not won:
        request: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if game["search_enabled"]:
            request["tools"] = [SEARCH_TOOL]
        if seed is not None:
            request["seed"] = seed + model_calls
        response = await client.chat.completions.create(**request)
        model_calls += 1
        message = response.choices[0].message
        content = message.content or ""
        calls = [c for c in message.tool_calls or [] if isinstance(c, ChatCompletionMessageFunctionToolCall)]
        if calls:
            messages.append(
                {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.function.name, "arguments": call.function.arguments},
                        }
                        for call in calls
                    ],
                }
            )
            for call in calls:
                if not game["search_enabled"] or call.function.name != "search":
                    result = f"There is no tool {call.function.name!r} in this game. This cost a question."
                elif tool_calls >= max_tool_calls:
                    result = f"Search limit of {max_tool_calls} reached. This cost a question; ask a question instead."
                else:
                    tool_calls += 1
                    result = await search.search(_query(call.function.arguments))
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
                    continue
                refused += 1
                turns += 1
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            continue
        messages.append({"role": "assistant", "content": content})
        turns += 1
        reply = await answerer.answer(question_text(content), game["answer"], game["category"])
        if reply == "correct":
            won = True
            messages.append({"role": "user", "content": f"Correct! It is {game['answer']}."})
        else:
            left = max_questions - turns
            plural = "" if left == 1 else "s"
            messages.append(
                {"role": "user", "content": f"{reply.capitalize()}. {left} question{plural} left."}
            )
    return GameResult(
        category=game["category"],
        answer=game["answer"],
        search_enabled=game["search_enabled"],
        won=won,
        turns=turns,
        tool_calls=tool_calls,
        refused_tool_calls=refused,
        model_calls=model_calls,
        reward=game_reward(won, turns, max_questions),
        end_reason="correct" if won else "out_of_questions",
        messages=messages,
    )


async def q20_rollout(task: dict[str, Any], llm: agl.LLM) -> float:
    """Play one game with the policy behind ``llm``; the returned float is the episode reward.

    ``llm.sampling_parameters`` may set ``temperature``, ``max_tokens`` and ``seed``.
    """
    sampling: dict[str, Any] = dict(llm.sampling_parameters or {})
    seed = sampling.get("seed")
    async with AsyncOpenAI(
        base_url=llm.get_base_url(), api_key=llm.api_key or "unused", max_retries=0
    ) as client:
        result = await play_game(
            client,
            llm.model,
            task,
            temperature=float(sampling.get("temperature", 1.0)),
            max_tokens=int(sampling.get("max_tokens", DEFAULT_MAX_TOKENS)),
            seed=None if seed is None else int(seed),
        )
    return result.reward


q20_agent = agl.rollout(q20_rollout)
