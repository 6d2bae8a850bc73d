"""Guess the number: the rules, shared by the OpenAI-client agent and the tinker-cookbook ``Env``.

A secret number in ``1..100``; each turn the model guesses and hears "Too low", "Too high" or
"Correct!"; at most :data:`MAX_TURNS` turns. Feedback repeats the range still open, so a model
that copies numbers from the conversation can binary-search. Reward (:func:`final_reward`): 1.0
for finding the number; otherwise up to 0.5 for how close the last valid guess came; 0.0 without
any valid guess (an answer with no number, or one cut off at ``max_tokens``, ends the game).

This module is pure (no I/O, no model): both implementations of the game call the same functions,
so any difference between them in training is the bridge's doing, not the game's.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TypedDict

LOW, HIGH = 1, 100
MAX_TURNS = 4
MAX_TOKENS = 24
"""Per-turn sampling budget; the simulated model's guesses take under ten tokens."""

_NUMBER = re.compile(r"(?<![\w.])-?\d+")


class GuessTask(TypedDict):
    """One game. ``seed`` makes sampling reproducible: turn ``t`` of group slot ``k`` samples with
    :func:`sample_seed` ``(seed, k, t)`` on both sides of the equivalence test."""

    secret: int
    seed: int


def tasks(n: int, seed: int = 0) -> list[GuessTask]:
    """``n`` games with secrets drawn from ``1..100`` and distinct sampling seeds."""
    rng = random.Random(seed)
    return [{"secret": rng.randint(LOW, HIGH), "seed": seed * 100_003 + i} for i in range(n)]


def sample_seed(task_seed: int, slot: int, turn: int) -> int:
    """The sampling seed of one turn of one rollout: distinct per (task, group slot, turn)."""
    return (task_seed * 64 + slot) * 16 + turn


def opening() -> str:
    return (
        f"I'm thinking of a number between {LOW} and {HIGH}. Guess the number! "
        "Answer with just your guess. I'll tell you if it is too low or too high."
    )


def parse_guess(text: str) -> int | None:
    """The first integer in the answer, or ``None``."""
    match = _NUMBER.search(text)
    return int(match.group(0)) if match else None


@dataclass
class Game:
    """State of one game: the range still open, guesses made, whether it is over."""

    secret: int
    low: int = LOW
    high: int = HIGH
    guesses: list[int] = field(default_factory=list)
    turns: int = 0
    won: bool = False
    done: bool = False

    def play(self, answer: str | None) -> str | None:
        """Judge one answer (``None``: cut off at ``max_tokens``); the next user message, or ``None``
        when the game is over."""
        assert not self.done, "the game is over"
        self.turns += 1
        guess = parse_guess(answer) if answer is not None else None
        if guess is None:
            self.done = True
            return None
        self.guesses.append(guess)
        if guess == self.secret:
            self.won = self.done = True
            return None
        if guess < self.secret:
            self.low = max(self.low, guess + 1)
            verdict = "Too low."
        else:
            self.high = min(self.high, guess - 1)
            verdict = "Too high."
        if self.turns >= MAX_TURNS:
            self.done = True
            return None
        return f"{verdict} The number is between {self.low} and {self.high}. Guess again."

    @property
    def reward(self) -> float:
        return final_reward(self.secret, self.guesses, self.won)


def final_reward(secret: int, guesses: list[int], won: bool) -> float:
    if won:
        return 1.0
    if not guesses:
        return 0.0
    distance = min(abs(guesses[-1] - secret), HIGH - LOW)
    return 0.5 * (1.0 - distance / (HIGH - LOW))
