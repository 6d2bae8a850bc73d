"""Hello training runs in one process (in-memory store, in-process runners) for the async tests.

Also a script, so a test can SIGKILL a run and restart it:
``python tests/async_run.py LOG_PATH STEPS SAVE_EVERY [MODE]`` trains asynchronously (one step off
policy; ``MODE`` as :data:`RESUME_MODES` names, ``async`` by default) with the simulator's checkpoints
under ``LOG_PATH/sim``; the same command resumes.
"""

from __future__ import annotations

import asyncio
import random
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agl_tinker.heavy_import import import_agentlightning

import_agentlightning()  # as the agl-tinker commands do: seconds less per process, at import and exit

import agentlightning as agl
from agentlightning.store.memory import InMemoryLightningStore
from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

from agl_tinker import backend
from agl_tinker.examples.hello.agent import hello_dataset, hello_rollout
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.train import TrainResult, train
from agl_tinker.runners.inprocess import AgentFn, InProcessRunners

BATCH, GROUP = 8, 4


def hello_config(
    log_path: Path, mode: str, steps: int, *, seed: int = 0, off_policy: int = 1, **overrides: Any
) -> TrainConfig:
    """Hello's CI settings; ``mode``: ``sync``, ``stream``, ``async`` (``off_policy`` steps) or
    ``paced`` (async, ``sampling_steps_ahead=off_policy``)."""
    extra: dict[str, Any] = {}
    if mode in ("async", "paced"):
        extra["async_config"] = AsyncConfig(max_steps_off_policy=off_policy, groups_per_batch=BATCH)
    if mode == "paced":
        extra["sampling_steps_ahead"] = off_policy
    elif mode == "stream":
        extra["stream_minibatch_config"] = StreamMinibatchConfig(groups_per_batch=BATCH, num_minibatches=4)
    return TrainConfig(
        log_path=str(log_path),
        max_steps=steps,
        batch_size=BATCH,
        group_size=GROUP,
        learning_rate=3e-2,
        lora_rank=8,
        max_tokens=32,
        seed=seed,
        rollout_timeout_s=60.0,
        **extra,
        **overrides,
    )


def with_stragglers(agent: AgentFn, slow_s: float, every: int, seed: int = 0) -> AgentFn:
    """``agent``, but after its LLM calls one task in ``every`` (by identity) takes ``slow_s`` more
    (a slow tool or judge), the rest ~20 ms: its samples age while it finishes."""

    async def run(task: Mapping[str, Any], llm: agl.LLM) -> float | None:
        reward = await agent(task, llm)
        slow = zlib.crc32(f"{seed}:{task['identity']}".encode()) % every == 0
        await asyncio.sleep(slow_s if slow else random.uniform(0.01, 0.03))  # ok: the agent's own latency
        return reward

    return run


async def run_hello(
    config: TrainConfig,
    *,
    agent: AgentFn = hello_rollout,  # type: ignore[assignment]
    costs: Mapping[str, float] | None = None,
    concurrency: int = BATCH * GROUP,
    store: InMemoryLightningStore | None = None,
    tasks: Any = None,
    val_tasks: Any = None,
) -> TrainResult:
    """Train ``config`` on ``tasks`` (Hello's by default) with in-process runners, against
    ``store`` (a fresh one by default); validated on ``val_tasks`` (none by default) every
    ``config.eval_every`` steps."""
    store = store if store is not None else InMemoryLightningStore()
    service = backend.service_client(root_dir=Path(config.log_path) / "sim", **dict(costs or {}))
    tasks = hello_dataset("train") if tasks is None else tasks
    async with InProcessRunners(store, agent, concurrency=concurrency):
        return await train(config, store, tasks, val_tasks, service=service, show_progress=False)


RESUME_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "async": ("async", {}),
    "paced_inflight_sr": ("paced", {"sampling_client_kind": "inflight", "loss_fn": "stable_reinforce"}),
}
"""The script's modes: ``hello_config`` mode and overrides."""


if __name__ == "__main__":
    log, steps, save_every = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    mode, overrides = RESUME_MODES[sys.argv[4] if len(sys.argv) > 4 else "async"]
    config = hello_config(log, mode, steps, save_every=save_every, **overrides)
    asyncio.run(run_hello(config, agent=with_stragglers(hello_rollout, 0.4, 5)))  # type: ignore[arg-type]
