"""Guess the number as ordinary OpenAI-client code: the agent a user writes for agl-tinker.

One ``chat.completions.create`` per turn over the whole conversation; the answer goes back into the
history as a plain assistant message and the game's feedback as the next user message. Nothing
here knows about Tinker, tokens or training. The rollout's group slot (Agent-lightning rollout
metadata that agl-tinker's dispatcher sets) and the task's ``seed`` pick each turn's sampling seed,
so a run replays exactly; a task without ``seed`` samples unseeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import agentlightning as agl
from openai import AsyncOpenAI

from agl_tinker.examples.clients import openai_client
from agl_tinker.examples.guess_number.game import MAX_TOKENS, Game, GuessTask, opening, sample_seed


@dataclass
class GameResult:
    messages: list[dict[str, Any]]
    won: bool
    turns: int
    reward: float
    finish_reasons: list[str] = field(default_factory=list)


async def play_game(
    client: AsyncOpenAI,
    model: str,
    task: GuessTask,
    *,
    slot: int = 0,
    temperature: float = 1.0,
    max_tokens: int = MAX_TOKENS,
) -> GameResult:
    """Play one game through ``client``; seeded per turn when the task has a ``seed``."""
    game = Game(secret=int(task["secret"]))
    messages: list[dict[str, Any]] = [{"role": "user", "content": opening()}]
    finish_reasons: list[str] = []
    while not game.done:
        extra: dict[str, Any] = {}
        if task.get("seed") is not None:
            extra["seed"] = sample_seed(int(task["seed"]), slot, game.turns)
        response = await client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            temperature=temperature,
            max_tokens=max_tokens,
            **extra,
        )
        choice = response.choices[0]
        content = choice.message.content or ""
        finish_reasons.append(str(choice.finish_reason))
        messages.append({"role": "assistant", "content": content})
        feedback = game.play(None if choice.finish_reason == "length" else content)
        if feedback is not None:
            messages.append({"role": "user", "content": feedback})
    return GameResult(messages, game.won, game.turns, game.reward, finish_reasons)


async def guess_number_rollout(task: GuessTask, llm: agl.LLM, rollout: agl.Rollout) -> float:
    """One game; the returned float is the episode reward."""
    sampling: dict[str, Any] = dict(llm.sampling_parameters or {})
    slot = int((rollout.metadata or {}).get("group_slot", 0))
    result = await play_game(
        openai_client(llm.get_base_url(), llm.api_key),
        llm.model,
        task,
        slot=slot,
        temperature=float(sampling.get("temperature", 1.0)),
        max_tokens=int(sampling.get("max_tokens", MAX_TOKENS)),
    )
    return result.reward


guess_number_agent = agl.rollout(guess_number_rollout)
