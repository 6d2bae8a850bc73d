"""Guess the number as a tinker-cookbook ``Env``: the same game the OpenAI agent plays, token level.

This is how the game is written without agl-tinker (see ``tinker_cookbook/rl/types.py``): an
``Env`` per rollout and an ``EnvGroupBuilder`` per task, run by the cookbook's own rollout code
(``tinker_cookbook.rl.rollouts.do_group_rollout``) with its ``TinkerTokenCompleter``. Observations
follow the cookbook's extension convention: the first one is the renderer's generation prompt,
and each next one is the previous observation + the sampled action + the rendering of the new user
message (and the generation prompt), so a multi-turn episode is one growing token sequence even
with a renderer that rewrites history when it re-renders it (``qwen3`` drops past ``<think>``).

Seeds: turn ``t`` of group slot ``k`` samples with ``game.sample_seed(task["seed"], k, t)``, like
the agent. ``TokenCompleter`` takes no seed, so the env publishes it in a context variable before
each observation it returns (each rollout of a group runs in its own asyncio task, so its own
context) and :class:`SeededSampler` adds it to the ``SamplingParams`` the unchanged
``TinkerTokenCompleter`` builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

import tinker
from tinker_cookbook.completers import StopCondition, TinkerTokenCompleter
from tinker_cookbook.renderers import Message, Renderer, get_text_content
from tinker_cookbook.rl.types import ActionExtra, Env, EnvGroupBuilder, StepResult

from agl_tinker.endpoint.tito import render_continuation
from agl_tinker.examples.guess_number.game import MAX_TOKENS, Game, GuessTask, opening, sample_seed

SAMPLE_SEED: ContextVar[int | None] = ContextVar("guess_number_sample_seed", default=None)
"""Seed for the next sampling call of the rollout running in this asyncio task."""


class GuessNumberEnv(Env):
    """One game, token level. Reward: the game's final reward on the last step, 0 before."""

    def __init__(self, task: GuessTask, slot: int, renderer: Renderer) -> None:
        self.task = task
        self.slot = slot
        self.renderer = renderer
        self.game = Game(secret=int(task["secret"]))
        self.messages: list[Message] = [Message(role="user", content=opening())]
        self.observation: list[int] = []
        self.stop = renderer.get_stop_sequences()

    def _continuation(self) -> list[int]:
        """Tokens the cookbook's prompt adds for the newest (user) message and the generation prompt."""
        tokens = render_continuation(self.renderer, self.messages, len(self.messages) - 1)
        assert tokens is not None, "text-only game"
        return tokens

    def _publish_seed(self) -> None:
        SAMPLE_SEED.set(sample_seed(int(self.task["seed"]), self.slot, self.game.turns))

    async def initial_observation(self) -> tuple[tinker.ModelInput, StopCondition]:
        self.observation = self.renderer.build_generation_prompt(self.messages).to_ints()
        self._publish_seed()
        return tinker.ModelInput.from_ints(self.observation), self.stop

    async def step(self, action: list[int], *, extra: ActionExtra | None = None) -> StepResult:
        message, termination = self.renderer.parse_response(action)
        text = get_text_content(message)
        truncated = (extra or {}).get("stop_reason") == "length" or not termination.is_clean
        self.messages.append(Message(role="assistant", content=text))
        feedback = self.game.play(None if truncated else text)
        if feedback is None:
            return StepResult(
                reward=self.game.reward,
                episode_done=True,
                next_observation=tinker.ModelInput.empty(),
                next_stop_condition=self.stop,
                metrics={"won": float(self.game.won), "turns": self.game.turns},
            )
        self.messages.append(Message(role="user", content=feedback))
        self.observation = [
            *self.observation,
            *action,
            *self._continuation(),
        ]
        self._publish_seed()
        return StepResult(
            reward=0.0,
            episode_done=False,
            next_observation=tinker.ModelInput.from_ints(self.observation),
            next_stop_condition=self.stop,
        )


class GuessNumberGroupBuilder(EnvGroupBuilder):
    """``group_size`` games of one task; env ``k`` is group slot ``k``."""

    def __init__(self, task: GuessTask, group_size: int, renderer: Renderer) -> None:
        self.task = task
        self.group_size = group_size
        self.renderer = renderer

    async def make_envs(self) -> Sequence[Env]:
        return [GuessNumberEnv(self.task, k, self.renderer) for k in range(self.group_size)]

    def logging_tags(self) -> list[str]:
        return ["guess_number"]


class SeededSampler:
    """A sampling client whose ``sample_async`` adds the seed the running env published."""

    def __init__(self, sampling_client: Any) -> None:
        self.inner = sampling_client

    async def sample_async(
        self,
        prompt: tinker.ModelInput,
        num_samples: int,
        sampling_params: tinker.SamplingParams,
        **kwargs: Any,
    ) -> Any:
        seed = SAMPLE_SEED.get()
        if seed is None:
            raise RuntimeError("no sampling seed published: sample only from a GuessNumberEnv's rollout")
        params = sampling_params.model_copy(update={"seed": seed})
        return await self.inner.sample(
            prompt=prompt, num_samples=num_samples, sampling_params=params, **kwargs
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def seeded_completer(sampling_client: Any, max_tokens: int = MAX_TOKENS, temperature: float = 1.0) -> Any:
    """The cookbook's ``TinkerTokenCompleter`` over :class:`SeededSampler`."""
    sampler: Any = SeededSampler(sampling_client)  # duck-types the SamplingClient surface the completer uses
    return TinkerTokenCompleter(sampler, max_tokens=max_tokens, temperature=temperature)
