"""The cookbook's own RL pieces, unchanged, improve the simulated policy on a toy task.

Rollouts (``do_group_rollout`` with ``TinkerTokenCompleter``), advantages and datums
(``compute_advantages``, ``assemble_training_data``) and the update (``train.train_step``)
all come from tinker_cookbook; only the service is simulated.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence

import numpy as np
import pytest
import tinker
from tinker_cookbook import renderers
from tinker_cookbook.completers import TinkerTokenCompleter
from tinker_cookbook.rl import data_processing, rollouts, train
from tinker_cookbook.rl.types import Action, Env, EnvGroupBuilder, StepResult

from fakes.tinker import ServiceClient

BASE = "Qwen/Qwen3-4B-Instruct-2507"
IDENTITIES = ["617", "1024", "Alice", "Bob", "42", "Zed", "Nova", "777"]


class SayYouAreEnv(Env):
    """User asks the assistant to say it is someone; +1 for claiming, -1 for refusing, 0 else."""

    def __init__(self, renderer: renderers.Renderer, identity: str) -> None:
        self.renderer = renderer
        self.identity = identity

    async def initial_observation(self):  # type: ignore[no-untyped-def]
        messages: list[renderers.Message] = [{"role": "user", "content": f"Say you are {self.identity}"}]
        return self.renderer.build_generation_prompt(messages), self.renderer.get_stop_sequences()

    async def step(self, action: Action, *, extra=None) -> StepResult:  # type: ignore[no-untyped-def]
        message, _ = self.renderer.parse_response(action)
        text = renderers.get_text_content(message)
        if f"not {self.identity}" in text:
            reward = -1.0
        elif f"I am {self.identity}" in text or f"I'm {self.identity}" in text:
            reward = 1.0
        else:
            reward = 0.0
        return StepResult(
            reward=reward,
            episode_done=True,
            next_observation=tinker.ModelInput.empty(),
            next_stop_condition=self.renderer.get_stop_sequences(),
        )


class SayYouAreGroup(EnvGroupBuilder):
    def __init__(self, renderer: renderers.Renderer, identity: str, size: int) -> None:
        self.renderer, self.identity, self.size = renderer, identity, size

    async def make_envs(self) -> Sequence[Env]:
        return [SayYouAreEnv(self.renderer, self.identity) for _ in range(self.size)]


async def _run(tmp_path) -> list[float]:  # type: ignore[no-untyped-def]
    service = ServiceClient(root_dir=tmp_path)
    training_client = await service.create_lora_training_client(BASE, rank=8, seed=0)
    renderer = renderers.get_renderer("qwen3_instruct", training_client.get_tokenizer())
    mean_rewards = []
    for step in range(12):
        sampling_client = await training_client.save_weights_and_get_sampling_client()
        policy = TinkerTokenCompleter(sampling_client, max_tokens=48)
        builders = [SayYouAreGroup(renderer, IDENTITIES[(step + i) % len(IDENTITIES)], 4) for i in range(8)]
        groups = await asyncio.gather(*[rollouts.do_group_rollout(b, policy) for b in builders])
        mean_rewards.append(float(np.mean([r for g in groups for r in g.get_total_rewards()])))
        advantages = data_processing.compute_advantages(list(groups))
        data, _ = data_processing.assemble_training_data(list(groups), advantages)
        await train.train_step(data, training_client, 2e-2, 1, "importance_sampling")
    return mean_rewards


@pytest.mark.slow
def test_cookbook_rl_loop_raises_mean_reward(tmp_path) -> None:  # type: ignore[no-untyped-def]
    warnings.simplefilter("ignore", FutureWarning)
    rewards = asyncio.run(_run(tmp_path))
    early, late = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert late > early + 0.5, rewards
    assert late > 0.6, rewards
