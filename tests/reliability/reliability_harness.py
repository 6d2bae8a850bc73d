"""In-process pieces for the reliability tests: runner coroutines, agents that misbehave, a run.

The runners do what an Agent-lightning runner does with the store API (dequeue a rollout, which
starts its attempt; run the agent against the ``main_llm`` resource; store the returned reward as
a reward span; mark the attempt finished), in the test's event loop, so a test costs no process
start-up and a hung agent is simply cancelled when the test ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agentlightning as agl
from agentlightning.store.base import LightningStore
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import Span

from agl_tinker.examples.hello.agent import hello_dataset, hello_rollout
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.train import TrainResult, train
from agl_tinker.loop.training_run import LLM_RESOURCE
from fakes.tinker import ServiceClient

Agent = Callable[[dict[str, Any], agl.LLM], Awaitable[float]]
"""``(task, llm) -> reward``, like a user's ``@agl.rollout`` function."""


async def hello(task: dict[str, Any], llm: agl.LLM) -> float:
    """The Hello 1024 agent, unchanged."""
    return await hello_rollout(task, llm)  # type: ignore[arg-type]


def hangs_on_odd(task: dict[str, Any]) -> bool:
    return int(task["identity"]) % 2 == 1


async def half_hang(task: dict[str, Any], llm: agl.LLM) -> float:
    """Half the identities sleep forever (an agent stuck on a tool call); the rest are Hello."""
    if hangs_on_odd(task):
        await asyncio.Event().wait()
    return await hello(task, llm)


async def always_raises(task: dict[str, Any], llm: agl.LLM) -> float:
    raise RuntimeError(f"agent bug on task {task}")


@dataclass
class InLoopRunners:
    """``n`` runner coroutines serving ``store``; cancelled (hung agents included) on exit."""

    store: LightningStore
    agent: Agent
    n: int = 2
    finished: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> InLoopRunners:
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(self.n)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, i: int) -> None:
        while True:
            attempted = await self.store.dequeue_rollout(worker_id=f"runner-{i}")
            if attempted is None:
                await asyncio.sleep(0.01)  # an idle runner re-checks the queue, as agl runners do
                continue
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            resources = None
            if attempted.resources_id is not None:
                resources = await self.store.get_resources_by_id(attempted.resources_id)
            proxy = resources.resources[LLM_RESOURCE] if resources is not None else None
            assert isinstance(proxy, agl.LLM), resources
            llm = agl.LLM(
                endpoint=proxy.get_base_url(rid, aid),  # type: ignore[call-arg]
                model=proxy.model,
                sampling_parameters=proxy.sampling_parameters,
            )
            try:
                reward = await self.agent(dict(attempted.input), llm)
            except Exception:
                await self.store.update_attempt(rid, aid, status="failed")
                continue
            core = agl.emit_reward(reward, propagate=False)
            seq = await self.store.get_next_span_sequence_id(rid, aid)
            await self.store.add_span(
                Span.from_core_fields(core, rollout_id=rid, attempt_id=aid, sequence_id=seq)
            )
            await self.store.update_attempt(rid, aid, status="succeeded")
            self.finished += 1


def hello_config(log_path: Path, **overrides: Any) -> TrainConfig:
    """A small Hello run: 8 tasks x 4, short answers, quick Tinker retries."""
    values: dict[str, Any] = {
        "log_path": str(log_path),
        "max_steps": 3,
        "batch_size": 4,
        "group_size": 4,
        "learning_rate": 3e-2,
        "lora_rank": 4,
        "max_tokens": 16,
        "rollout_timeout_s": 30.0,
        "tinker_retry_base_s": 0.01,
        "tinker_retry_max_s": 0.05,
    }
    values.update(overrides)
    return TrainConfig(**values)


def memory_store() -> InMemoryLightningStore:
    # scan_debounce_seconds=0: the store's timeout watchdog runs on every call (fast timeouts).
    return InMemoryLightningStore(scan_debounce_seconds=0)


@asynccontextmanager
async def running(store: LightningStore, agent: Agent, n: int = 2) -> AsyncIterator[InLoopRunners]:
    async with InLoopRunners(store, agent, n) as runners:
        yield runners


async def run_hello(
    config: TrainConfig,
    agent: Agent = hello,
    *,
    sim_dir: Path,
    n_runners: int = 2,
    store: LightningStore | None = None,
    **sim_knobs: Any,
) -> TrainResult:
    """Train ``config`` on Hello tasks with in-loop runners and a simulator rooted at ``sim_dir``."""
    store = store or memory_store()
    service = ServiceClient(root_dir=str(sim_dir), **sim_knobs)
    async with running(store, agent, n_runners):
        return await train(
            config,
            store,
            hello_dataset("train")[:64],
            required_fields=("identity",),
            service=service,
            show_progress=False,
        )
