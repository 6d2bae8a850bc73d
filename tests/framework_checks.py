"""What every framework test checks, written once: recorded calls, tool round trips, sequences, training.

``episodes_until`` runs a framework agent against a real endpoint (simulator backend) until
episodes with the wanted features (e.g. a tool round trip, :func:`tool_round_trip`) turned up,
each with its trajectory and the number of model calls the framework itself reports; ``check_episode`` asserts the issue's per-episode
contract; ``train_few_steps`` trains the agent through ``agl_tinker.algorithm.fit`` (the stock
Agent-lightning trainer with the project's runner) and asserts that datums were trained.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agentlightning as agl
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded

from agl_tinker.algorithm import fit
from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.core.trajectory import RolloutTrajectory, rollout_trajectory
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.train import TrainResult

MODEL = "Qwen/Qwen3-4B-Instruct-2507"

RunEpisode = Callable[[agl.LLM, int], Awaitable[int]]
"""Runs one episode of a framework agent with the given resource and seed; returns the number of
LLM calls the framework made (as the framework itself counts them)."""


@dataclass
class Served:
    endpoint: Endpoint
    store: Any


@asynccontextmanager
async def served_endpoint(max_tokens: int = 96) -> AsyncIterator[Served]:
    """The endpoint over the simulator's base model, recording into an in-memory store."""
    sampler = service_client().create_sampling_client(base_model=MODEL).result()
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(default_max_tokens=max_tokens),
        store=store,
        sampling_client=sampler,
        base_model=MODEL,
        tokenizer=get_tokenizer(MODEL),
    )
    try:
        yield Served(endpoint, store)
    finally:
        await endpoint.stop()


@dataclass
class Episode:
    trajectory: RolloutTrajectory
    framework_calls: int
    seed: int

    @property
    def calls(self) -> Sequence[Any]:
        return self.trajectory.reconstruction.calls


async def run_episode(served: Served, run: RunEpisode, seed: int) -> Episode:
    rollout = await served.store.start_rollout(input={"seed": seed})
    llm = served.endpoint.as_resource(rollout.rollout_id, rollout.attempt.attempt_id)
    framework_calls = await run(llm, seed)
    await served.endpoint.flush()
    spans = await served.store.query_spans(rollout.rollout_id)
    trajectory = rollout_trajectory(spans, status=None, decode=get_tokenizer(MODEL).decode)
    return Episode(trajectory, framework_calls, seed)


def tool_round_trip(episode: Episode, tool: str) -> bool:
    """Whether a call asked for ``tool`` and a later call's messages carry its result as a tool message."""
    calls = list(episode.calls)
    for i, call in enumerate(calls):
        asked = [c for c in (call.completion or {}).get("tool_calls") or [] if c["function"]["name"] == tool]
        if not asked:
            continue
        ids = {c["id"] for c in asked}
        for later in calls[i + 1 :]:
            if any(m.get("role") == "tool" and m.get("tool_call_id") in ids for m in later.messages or []):
                return True
    return False


async def episodes_until(
    served: Served, run: RunEpisode, *wanted: Callable[[Episode], bool], tries: int = 64
) -> tuple[list[Episode], list[Episode]]:
    """Episodes (seed ``i`` picks the task; the sampling is not seeded) until each ``wanted``
    predicate held for one of them.

    Returns (the first episode matching each predicate, in order; every episode run).

    ``tries``: the rarest path wanted here, the base policy calling ``lookup`` from the Agents SDK
    or the Anthropic agent, comes in about one episode of five (34 of 160 and 12 of 60 measured). 32
    tries then miss with probability 0.8**32 = 8e-4, which one CI run hit; 64 miss with 6e-7 and
    cost nothing more when the path comes early."""
    episodes: list[Episode] = []
    found: list[Episode | None] = [None] * len(wanted)
    for seed in range(tries):
        episode = await run_episode(served, run, seed)
        episodes.append(episode)
        for i, predicate in enumerate(wanted):
            if found[i] is None and predicate(episode):
                found[i] = episode
        if all(f is not None for f in found):
            return [f for f in found if f is not None], episodes
    missing = [i for i, f in enumerate(found) if f is None]
    raise AssertionError(f"no episode matched predicates {missing} in {tries} seeded episodes")


def check_episode(episode: Episode) -> None:
    """The per-episode contract of issue 19: every framework call reconstructed, with token ids and
    logprobs; tool calls parsed into ``tool_calls`` with JSON arguments; tool results sent back as
    ``role="tool"`` messages naming the call they answer."""
    calls = episode.calls
    assert len(calls) == episode.framework_calls >= 1, (len(calls), episode.framework_calls)
    for call in calls:
        assert call.trainable, call.problem
        assert call.prompt_token_ids and call.response_token_ids
        assert len(call.logprobs or []) == len(call.response_token_ids)
    issued: dict[str, str] = {}
    for call in calls:
        for message in call.messages or []:
            if message.get("role") == "tool":
                assert message.get("tool_call_id") in issued, message
        completion = call.completion or {}
        for tool_call in completion.get("tool_calls") or []:
            assert call.finish_reason == "tool_calls"
            json.loads(tool_call["function"]["arguments"])
            issued[tool_call["id"]] = tool_call["function"]["name"]


def sequence_report(episodes: Sequence[Episode]) -> dict[str, float]:
    """Calls per episode, sequences per episode and drift events per episode over ``episodes``."""
    n = len(episodes)
    return {
        "calls_per_episode": sum(len(e.calls) for e in episodes) / n,
        "sequences_per_episode": sum(len(e.trajectory.alignment.sequences) for e in episodes) / n,
        "drift_per_episode": sum(len(e.trajectory.alignment.drift) for e in episodes) / n,
    }


def train_few_steps(
    agent: agl.LitAgent[Any],
    tasks: Sequence[dict[str, Any]],
    log_path: Path,
    *,
    steps: int = 3,
    **config: Any,
) -> TrainResult:
    """Train ``agent`` for ``steps`` steps on the simulator with one runner process; every step trains datums."""
    settings: dict[str, Any] = {
        "log_path": str(log_path),
        "max_steps": steps,
        "batch_size": len(tasks),
        "group_size": 4,
        "n_epochs": steps,
        "learning_rate": 3e-2,
        "lora_rank": 8,
        "max_tokens": 96,
        "rollout_timeout_s": 60.0,
        **config,
    }
    result = fit(agent, TrainConfig(**settings), list(tasks), n_runners=1)
    assert [s["step"] for s in result.steps] == list(range(steps))
    for step in result.steps:
        assert step["rollouts/succeeded_frac"] == 1.0, step
        assert step["train/datums"] > 0, step
        assert step["calls/total"] >= step["rollouts/total"], step
    return result
