"""Fault scenarios the reliability tests run in their own processes; each prints one JSON line.

``python tests/reliability/scenarios.py NAME --log-path DIR``. A scenario that hangs is killed by
the test's timeout instead of hanging the test session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from typing import Any

from agl_tinker.heavy_import import import_agentlightning

import_agentlightning()  # as the agl-tinker commands do: seconds less per process, at import and exit

import agentlightning as agl

from agl_tinker import algorithm as algo
from agl_tinker.examples.clients import openai_client
from agl_tinker.examples.hello.agent import hello_dataset, prompt_for, score
from agl_tinker.loop.config import TrainConfig


async def hang_on_odd_identities(task: dict[str, str], llm: agl.LLM) -> float:
    """Half the agents (odd identities) sleep forever; the others answer and are scored."""
    if int(task["identity"]) % 2:
        await asyncio.Event().wait()
    client = openai_client(llm.get_base_url(), llm.api_key)
    answer = await client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": prompt_for(task["identity"])}], max_tokens=16
    )
    return score(answer.choices[0].message.content or "", task["identity"])


def hang(log_path: str) -> dict[str, Any]:
    config = TrainConfig(
        log_path=log_path,
        max_steps=1,
        batch_size=4,
        group_size=2,
        max_tokens=16,
        eval_every=0,
        save_every=0,
        # wide enough that an answering agent never times out on a loaded machine (first calls of a fresh
        # runner import and render for seconds), short enough that the hung half costs seconds, not minutes
        rollout_timeout_s=10.0,
        min_valid_per_group=1,
    )
    result = algo.fit(agl.rollout(hang_on_odd_identities), config, hello_dataset()[:4], n_runners=2)
    return {"steps": result.steps}


def constant_reward_agent(reward: float) -> agl.LitAgent[Any]:
    """An agent that asks the model once and always scores ``reward``: its runs' rewards show whose
    agent ran their rollouts."""

    async def rollout(task: dict[str, str], llm: agl.LLM) -> float:
        client = openai_client(llm.get_base_url(), llm.api_key)
        await client.chat.completions.create(
            model=llm.model,
            messages=[{"role": "user", "content": prompt_for(task["identity"])}],
            max_tokens=8,
        )
        return reward

    return agl.rollout(rollout)


def own_run(log_path: str, reward: float) -> dict[str, Any]:
    """The README's Python pattern, for 3 steps, with an agent that always scores ``reward``."""
    config = TrainConfig(
        log_path=log_path, max_steps=3, batch_size=2, group_size=2, max_tokens=8, eval_every=0, save_every=0
    )
    algorithm = algo.TinkerAlgorithm(config, show_progress=False)
    trainer = agl.Trainer(
        algorithm=algorithm, runner=algo.fast_runner(), strategy=algo.LeanServerStrategy(n_runners=2)
    )
    trainer.fit(constant_reward_agent(reward), train_dataset=hello_dataset()[:16])
    assert algorithm.result is not None
    return {"steps": algorithm.result.steps, "rewards": algorithm.result.rewards}


def victim_agent(log_path: str) -> agl.LitAgent[Any]:
    """Hello, except that the first rollout of identity 1 writes its runner's pid to
    ``LOG_PATH/victim`` and waits there to be killed."""
    victim = os.path.join(log_path, "victim")

    async def rollout(task: dict[str, str], llm: agl.LLM) -> float:
        if task["identity"] == "1":
            with contextlib.suppress(FileExistsError):
                fd = os.open(victim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                await asyncio.Event().wait()  # until killed
        return await hang_on_odd_identities({"identity": "0"}, llm)

    return agl.rollout(rollout)


def kill_runner(log_path: str) -> dict[str, Any]:
    """Two runner processes; the test SIGKILLs the one running the victim rollout. The rollout
    timeout is far longer than the test waits: only noticing the death ends that rollout."""
    os.makedirs(log_path, exist_ok=True)
    config = TrainConfig(
        log_path=log_path,
        max_steps=2,
        batch_size=2,
        group_size=2,
        max_tokens=8,
        eval_every=0,
        save_every=0,
        rollout_timeout_s=3600.0,
        min_valid_per_group=1,
    )
    result = algo.fit(victim_agent(log_path), config, hello_dataset()[:4], n_runners=2)
    return {"steps": result.steps}


SCENARIOS = {"hang": hang, "own_run": own_run, "kill_runner": kill_runner}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=sorted(SCENARIOS))
    parser.add_argument("--log-path", required=True)
    parser.add_argument("--reward", type=float, default=None, help="own_run: the agent's constant reward")
    args = parser.parse_args()
    extra = {} if args.reward is None else {"reward": args.reward}
    print(json.dumps(SCENARIOS[args.name](args.log_path, **extra), default=str))


if __name__ == "__main__":
    main()
