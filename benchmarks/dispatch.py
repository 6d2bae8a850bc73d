"""Bridge overhead per rollout: from the runner finishing a rollout to its result being ready.

Run ``python benchmarks/dispatch.py``; prints one JSON object:

* ``overhead_ms_p50`` / ``overhead_ms_p99``: ``{"memory": ..., "http": ...}``, per rollout, from
  the store's ``end_time`` (set when the runner's ``update_attempt(succeeded)`` lands) to
  ``process()`` having returned in the algorithm (``RolloutOutcome.overhead_s``).
  - ``memory``: the standard Agent-lightning layout. The algorithm owns an ``InMemoryLightningStore``
    behind a ``LightningStoreServer`` (thread) and waits on the store's completion events;
    runners are another process talking HTTP to that server.
  - ``http``: the algorithm is a separate process from the store: the server runs in its own
    process, the algorithm uses ``LightningStoreClient`` (long-poll waits), runners as above.
* ``steps_per_s``: the whole offline loop on a Hello-sized task. ``null`` until the training loop
  (``agl_tinker/train.py``) exists; the reason is in ``notes``.

Workload: Hello-sized batches (8 tasks × group 4 = 32 rollouts, all in flight), 32 runner
coroutines (idle ones re-check the queue every 0.5-1 s) whose "agent" takes 50-300 ms and emits
one reward span, a process() that reads the reward (the pure pipeline has its own benchmark).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agentlightning as agl
from agentlightning.emitter.reward import get_reward_value
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import Rollout, Span

from agl_tinker.rollout import DispatchConfig, dispatch_batch

BATCH_SIZE, GROUP_SIZE, N_BATCHES, N_RUNNERS = 8, 4, 6, 32
WORK_S = (0.05, 0.3)
IDLE_POLL_S = (0.5, 1.0)  # agl runners default to 5 s; faster here so batches start promptly


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quiet() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    for name in ("agentlightning", "uvicorn", "uvicorn.access", "uvicorn.error", "LiteLLM"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------- child processes


def _server_main(port: int) -> None:
    _quiet()
    server = LightningStoreServer(
        InMemoryLightningStore(), host="127.0.0.1", port=port, launch_mode="asyncio"
    )
    asyncio.run(server.run_forever())


def _runners_main(endpoint: str, seed: int) -> None:
    _quiet()
    asyncio.run(_runners(endpoint, seed))


async def _runners(endpoint: str, seed: int) -> None:
    store = LightningStoreClient(endpoint)
    rng = random.Random(seed)

    async def runner(i: int) -> None:
        while True:
            try:
                ar = await store.dequeue_rollout(worker_id=f"bench-{i}")
            except Exception:  # the server is not up yet
                ar = None
            if ar is None:
                await asyncio.sleep(rng.uniform(*IDLE_POLL_S))  # an idle runner re-checks the queue
                continue
            await asyncio.sleep(rng.uniform(*WORK_S))  # the agent's work
            core = agl.emit_reward(float(ar.input["x"]), propagate=False)
            seq = await store.get_next_span_sequence_id(ar.rollout_id, ar.attempt.attempt_id)
            await store.add_span(
                Span.from_core_fields(
                    core, rollout_id=ar.rollout_id, attempt_id=ar.attempt.attempt_id, sequence_id=seq
                )
            )
            await store.update_attempt(ar.rollout_id, ar.attempt.attempt_id, status="succeeded")

    await asyncio.gather(*(runner(i) for i in range(N_RUNNERS)))


# ---------------------------------------------------------------------------------- algorithm


def _process(rollout: Rollout, spans: Sequence[Span]) -> float | None:
    rewards = [r for s in spans if (r := get_reward_value(s)) is not None]
    return rewards[-1] if rewards else None


async def _measure(store: Any) -> dict[str, Any]:
    tasks = [{"x": i} for i in range(BATCH_SIZE)]
    overheads: list[float] = []
    walls: list[float] = []
    strategy = ""
    for _ in range(N_BATCHES):
        result = await dispatch_batch(store, tasks, GROUP_SIZE, _process, config=DispatchConfig())
        if result.stats.status_counts != {"succeeded": BATCH_SIZE * GROUP_SIZE}:
            raise RuntimeError(f"benchmark batch did not fully succeed: {result.stats.status_counts}")
        overheads += [o * 1000 for o in result.stats.overheads_s]
        walls.append(result.stats.wall_s)
    from agl_tinker.rollout import _CompletionWatcher  # which waiting strategy was measured

    strategy = _CompletionWatcher(store, DispatchConfig(), None).strategy  # type: ignore[arg-type]
    overheads.sort()
    return {
        "p50": round(statistics.median(overheads), 2),
        "p99": round(overheads[min(len(overheads) - 1, round(0.99 * (len(overheads) - 1)))], 2),
        "max": round(overheads[-1], 2),
        "n": len(overheads),
        "batch_wall_s_mean": round(statistics.fmean(walls), 3),
        "wait": strategy,
    }


async def _bench_memory(port: int) -> dict[str, Any]:
    server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=port)
    await server.start()
    try:
        return await _measure(server)
    finally:
        await server.stop()


async def _bench_http(endpoint: str) -> dict[str, Any]:
    client = LightningStoreClient(endpoint)
    try:
        for _ in range(600):  # the server child is importing; wait until it answers
            try:
                await client.statistics()
                break
            except Exception:
                await asyncio.sleep(0.1)
        return await _measure(client)
    finally:
        await client.close()


def main() -> None:
    _quiet()
    # fork before this process starts any thread (the memory benchmark's server thread).
    ctx = mp.get_context("fork")
    mem_port, http_port = _free_port(), _free_port()
    http_endpoint = f"http://127.0.0.1:{http_port}"
    children = [
        ctx.Process(target=_runners_main, args=(f"http://127.0.0.1:{mem_port}", 1), daemon=True),
        ctx.Process(target=_server_main, args=(http_port,), daemon=True),
    ]
    for p in children:
        p.start()
    try:
        memory = asyncio.run(_bench_memory(mem_port))
    finally:
        children[0].terminate()
    http_runners = ctx.Process(target=_runners_main, args=(http_endpoint, 2), daemon=True)
    http_runners.start()
    children.append(http_runners)
    try:
        http = asyncio.run(_bench_http(http_endpoint))
    finally:
        for p in children:
            p.terminate()
        for p in children:
            p.join(5)

    train_exists = (Path(__file__).resolve().parents[1] / "agl_tinker" / "train.py").exists()
    out = {
        "overhead_ms_p50": {"memory": memory["p50"], "http": http["p50"]},
        "overhead_ms_p99": {"memory": memory["p99"], "http": http["p99"]},
        "steps_per_s": None,
        "detail": {"memory": memory, "http": http},
        "workload": {
            "batch_size": BATCH_SIZE,
            "group_size": GROUP_SIZE,
            "batches": N_BATCHES,
            "runners": N_RUNNERS,
            "agent_work_s": list(WORK_S),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "notes": (
            "steps_per_s needs the offline training loop (agl_tinker/train.py)"
            + (
                ", which is not wired into this benchmark yet"
                if train_exists
                else ", which does not exist yet"
            )
        ),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - t0:.1f}s", file=sys.stderr)
