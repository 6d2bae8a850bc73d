"""Bridge overhead per rollout: from the runner finishing a rollout to its result being ready.

Run ``python benchmarks/dispatch.py``; prints one JSON object:

* ``overhead_ms_p50`` / ``overhead_ms_p99``: ``{"memory": ..., "http": ...}``, per rollout, from
  the store's ``end_time`` (set when the runner's ``update_attempt(succeeded)`` lands) to
  ``process()`` having returned in the algorithm (``RolloutOutcome.overhead_s``).
  - ``memory``: the standard Agent-lightning layout. The algorithm owns an ``InMemoryLightningStore``
    behind a ``LightningStoreServer`` (thread) and waits on the store's completion events;
    runners are another process talking HTTP to that server.
  - ``http``: split mode. The store server is its own process (``agl-tinker store``: the
    in-memory store behind ``agl_tinker.store_server.LeanStoreServer``), the algorithm uses
    ``LightningStoreClient`` (wait-for-any requests), runners as above.
* ``steps_per_s``: the whole offline loop on a Hello-sized task: Hello's CI configuration
  (``agl-tinker hello --ci``: 8 tasks × group 4, 6 steps, eval and checkpoint every 3, 2 runner
  processes, the in-process Tinker simulator) through ``agl_tinker.algorithm.fit``, in a child forked at
  start-up and run after the dispatch phases. Steps per second over steps 2-6 (step 1 is the
  warm-up: store, endpoint and runner start-up); the eval and checkpoint at step 3 are included.
* ``detail.http_floor``: the ``http`` setup with detection for free: runners report each
  finished rollout on a pipe and the algorithm only reads (``query_spans`` per rollout alongside
  one ``query_rollouts`` per round, as ``dispatch_batch`` does). No waiting design can beat it;
  ``http`` minus ``http_floor`` is what waiting costs.
* ``detail.http_long_poll``: ``http`` with ``DispatchConfig(wait="long_poll")``: what
  wait-for-any saves over long-polling through Agent-lightning's own wait route.
* ``detail.http_stock_server``: ``http`` against Agent-lightning's own ``LightningStoreServer``
  (what ``agl store`` runs; it has no wait-for-any route, so dispatch long-polls), for comparison.

Workload: Hello-sized batches (8 tasks × group 4 = 32 rollouts, all in flight), 32 runner
coroutines (idle ones re-check the queue every 0.5-1 s) whose "agent" takes 50-300 ms and emits
one reward span, a process() that reads the reward (the pure pipeline has its own benchmark).
Per rollout a runner makes the calls an Agent-lightning runner makes at least (dequeue, next
sequence id, add span, update attempt; the real one also fetches resources and heartbeats).

Where the ``http`` time goes (2 shared cores): every store call, the runners' own included, goes
through one server event loop, so the overhead is a round trip or two under the batch's load
(detection, then the reads). Agent-lightning 0.3.0's server spends 3-5 ms of CPU per request in
two ``BaseHTTPMiddleware`` layers, saturates a core while 32 rollouts finish and answers in tens
of ms then (``http_stock_server``). ``LeanStoreServer`` replaces those layers with one plain ASGI
middleware of the same behaviour (and uvicorn parses HTTP with ``httptools``), which brings a
loaded round trip to a few ms. ``detect_ms_p50``/``read_ms_p50`` split each overhead at the
moment dispatch noticed the rollout: long-polling notices a rollout no slot holds only at the
next sweep; wait-for-any notices every rollout one round trip after it finished, and its answer
already carries the rollout, so the read is the spans alone. Spans cannot be read for several
rollouts in one call (``query_spans`` takes exactly one rollout id).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import platform
import queue
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agentlightning as agl
from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs
from agentlightning.emitter.reward import get_reward_value
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import EnqueueRolloutRequest, Rollout, Span

from agl_tinker.dispatch.batch import dispatch_batch
from agl_tinker.dispatch.types import DispatchConfig, WaitStrategy
from agl_tinker.runners.store_wait import wait_for_store
from agl_tinker.split_store import serve_store

BATCH_SIZE, GROUP_SIZE, N_BATCHES, N_RUNNERS = 8, 4, 6, 32
WORK_S = (0.05, 0.3)
IDLE_POLL_S = (0.5, 1.0)  # agl runners default to 5 s; faster here so batches start promptly
HELLO_TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quiet() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    for name in ("agentlightning", "uvicorn", "uvicorn.access", "uvicorn.error", "LiteLLM"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------- child processes


def _server_main(port: int, stock: bool = False) -> None:
    _quiet()
    if not stock:
        asyncio.run(serve_store("127.0.0.1", port))  # what `agl-tinker store` runs
        return
    server = LightningStoreServer(  # what `agl store` runs
        InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=port, launch_mode="asyncio"
    )
    asyncio.run(server.run_forever())


def _runners_main(endpoint: str, seed: int, notify: Any = None) -> None:
    _quiet()
    asyncio.run(_runners(endpoint, seed, notify))


async def _runners(endpoint: str, seed: int, notify: Any = None) -> None:
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
            if notify is not None:  # floor phase only: tell the algorithm directly, bypassing the store
                notify.put(ar.rollout_id)

    await asyncio.gather(*(runner(i) for i in range(N_RUNNERS)))


# ---------------------------------------------------------------------------------- algorithm


def _process(rollout: Rollout, spans: Sequence[Span]) -> float | None:
    rewards = [r for s in spans if (r := get_reward_value(s)) is not None]
    return rewards[-1] if rewards else None


async def _measure(store: Any, wait: WaitStrategy = "auto") -> dict[str, Any]:
    tasks = [{"x": i} for i in range(BATCH_SIZE)]
    overheads: list[float] = []
    detects: list[float] = []
    reads: list[float] = []
    walls: list[float] = []
    waits: set[str] = set()
    for _ in range(N_BATCHES):
        result = await dispatch_batch(store, tasks, GROUP_SIZE, _process, config=DispatchConfig(wait=wait))
        waits.add(result.stats.wait)
        if result.stats.status_counts != {"succeeded": BATCH_SIZE * GROUP_SIZE}:
            raise RuntimeError(f"benchmark batch did not fully succeed: {result.stats.status_counts}")
        overheads += [o * 1000 for o in result.stats.overheads_s]
        detects += [o * 1000 for o in result.stats.detects_s]
        reads += [o * 1000 for o in result.stats.reads_s]
        walls.append(result.stats.wall_s)
    return {
        **_quantiles(overheads),
        # the overhead's two parts: end_time -> dispatch noticed it; noticed -> process() returned
        "detect_ms_p50": _quantiles(detects)["p50"],
        "read_ms_p50": _quantiles(reads)["p50"],
        "batch_wall_s_mean": round(statistics.fmean(walls), 3),
        "wait": "/".join(sorted(waits)),  # how completions were learned
    }


async def _bench_memory(port: int) -> dict[str, Any]:
    server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=port)
    await server.start()
    try:
        return await _measure(server)
    finally:
        await server.stop()


async def _bench_http(endpoint: str, wait: WaitStrategy = "auto") -> dict[str, Any]:
    if not await wait_for_store(endpoint, timeout_s=60):  # the server child may still be importing
        raise RuntimeError(f"the store server at {endpoint} did not start")
    client = LightningStoreClient(endpoint)
    try:
        return await _measure(client, wait)
    finally:
        await client.close()


async def _bench_floor(endpoint: str, notify: Any) -> dict[str, Any]:
    """The same reads as ``dispatch_batch`` with detection for free: runners report finishing on a pipe.

    Whatever the waiting design, a finished rollout costs at least the tail of the runner's own
    ``update_attempt`` (the store sets ``end_time`` before it answers) plus one read round trip
    (``query_spans`` alongside one ``query_rollouts`` per round), both through the same server
    under the same runner load. That sum is this phase's overhead: the floor for ``http``.
    """
    client = LightningStoreClient(endpoint)
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    stop = threading.Event()

    def pump() -> None:  # the notify queue blocks; hand ids to the loop from a thread
        while not stop.is_set():
            try:
                rid = notify.get(timeout=0.05)
            except queue.Empty:
                continue
            loop.call_soon_threadsafe(arrived.put_nowait, (rid, time.time()))

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    overheads: list[float] = []
    detects: list[float] = []
    reads: list[float] = []

    async def read(ids: list[str], noticed: float) -> None:
        rollouts = asyncio.ensure_future(client.query_rollouts(rollout_id_in=ids))

        async def one(rid: str) -> None:
            spans = await client.query_spans(rid, "latest")
            rollout = next(r for r in await rollouts if r.rollout_id == rid)
            _process(rollout, spans)
            assert rollout.end_time is not None
            ready = time.time()
            overheads.append((ready - rollout.end_time) * 1000)
            detects.append((noticed - rollout.end_time) * 1000)
            reads.append((ready - noticed) * 1000)

        await asyncio.gather(*(one(rid) for rid in ids))

    try:
        requests = [
            EnqueueRolloutRequest(input={"x": i}, metadata={"group_slot": k})
            for i in range(BATCH_SIZE)
            for k in range(GROUP_SIZE)
        ]
        for _ in range(N_BATCHES):
            pending = {r.rollout_id for r in await client.enqueue_many_rollouts(requests)}
            async with asyncio.TaskGroup() as tg:
                while pending:
                    got = [await arrived.get()]
                    while not arrived.empty():
                        got.append(arrived.get_nowait())
                    ids = [rid for rid, _ in got if rid in pending]
                    pending.difference_update(ids)
                    if ids:
                        tg.create_task(read(ids, got[0][1]))
    finally:
        stop.set()
        pumper.join()
        await client.close()
    return {
        **_quantiles(overheads),
        "detect_ms_p50": _quantiles(detects)["p50"],  # end_time -> the runner told us
        "read_ms_p50": _quantiles(reads)["p50"],
    }


def _quantiles(overheads_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(overheads_ms)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
        "max": round(ordered[-1], 2),
        "n": len(ordered),
    }


def _hello_main(conn: Any, log_dir: str) -> None:
    """Hello's CI configuration end to end (``agl-tinker hello --ci``), timing each step."""
    _quiet()
    os.dup2(2, 1)  # the loop's progress lines must not reach the benchmark's JSON on stdout
    if not conn.recv():  # "go" once the dispatch phases are done; False means "not needed"
        return
    from agl_tinker.examples.hello.train import hello_config, run_one_click

    marks: list[float] = []
    t0 = time.perf_counter()
    run_one_click(
        hello_config(log_dir, ci=True), on_step=lambda _step, _metrics: marks.append(time.perf_counter())
    )
    conn.send({"marks": [m - t0 for m in marks], "wall_s": time.perf_counter() - t0})


def _steps_per_s(hello: dict[str, Any]) -> dict[str, Any]:
    marks = hello["marks"]
    steps = len(marks) - 1  # the first step is the warm-up
    return {
        "steps_per_s": round(steps / (marks[-1] - marks[0]), 3),
        "timed_steps": steps,
        "step_s": [round(b - a, 2) for a, b in itertools.pairwise(marks)],
        "first_step_s": round(marks[0], 2),
        "run_wall_s": round(hello["wall_s"], 1),
    }


def main() -> None:
    _quiet()
    # fork before this process starts any thread (the memory benchmark's server thread).
    ctx = mp.get_context("fork")
    mem_port, http_port, stock_port = _free_port(), _free_port(), _free_port()
    http_endpoint = f"http://127.0.0.1:{http_port}"
    stock_endpoint = f"http://127.0.0.1:{stock_port}"
    notify = ctx.Queue()
    hello_conn, hello_child_conn = ctx.Pipe()
    log_dir = tempfile.mkdtemp(prefix="agl-tinker-bench-hello-")
    # not daemonic: the Hello run starts runner processes of its own
    hello = ctx.Process(target=_hello_main, args=(hello_child_conn, log_dir))
    children = [
        ctx.Process(target=_runners_main, args=(f"http://127.0.0.1:{mem_port}", 1), daemon=True),
        ctx.Process(target=_server_main, args=(http_port,), daemon=True),
        ctx.Process(target=_server_main, args=(stock_port, True), daemon=True),
    ]
    for p in [*children, hello]:
        p.start()
    try:
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
            http_runners.terminate()
        floor_runners = ctx.Process(target=_runners_main, args=(http_endpoint, 3, notify), daemon=True)
        floor_runners.start()
        children.append(floor_runners)
        floor = asyncio.run(_bench_floor(http_endpoint, notify))
        floor_runners.terminate()
        poll_runners = ctx.Process(target=_runners_main, args=(http_endpoint, 5), daemon=True)
        poll_runners.start()
        children.append(poll_runners)
        long_poll = asyncio.run(_bench_http(http_endpoint, "long_poll"))
        poll_runners.terminate()
        stock_runners = ctx.Process(target=_runners_main, args=(stock_endpoint, 4), daemon=True)
        stock_runners.start()
        children.append(stock_runners)
        stock = asyncio.run(_bench_http(stock_endpoint))
        for p in children:
            p.terminate()
        hello_conn.send(True)
        if not hello_conn.poll(HELLO_TIMEOUT_S):
            raise RuntimeError(f"the Hello run did not finish within {HELLO_TIMEOUT_S}s")
        steps = _steps_per_s(hello_conn.recv())
    finally:
        for p in children:
            p.terminate()
        if hello.is_alive() and hello.exitcode is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                hello_conn.send(False)
        hello.join(30)
        if hello.is_alive():
            hello.terminate()
        for p in children:
            p.join(5)
        shutil.rmtree(log_dir, ignore_errors=True)

    out = {
        "overhead_ms_p50": {"memory": memory["p50"], "http": http["p50"]},
        "overhead_ms_p99": {"memory": memory["p99"], "http": http["p99"]},
        "steps_per_s": steps["steps_per_s"],
        "detail": {
            "memory": memory,
            "http": http,
            "http_floor": floor,
            "http_long_poll": long_poll,
            "http_stock_server": stock,
            "hello": steps,
        },
        "workload": {
            "batch_size": BATCH_SIZE,
            "group_size": GROUP_SIZE,
            "batches": N_BATCHES,
            "runners": N_RUNNERS,
            "agent_work_s": list(WORK_S),
            "runner_idle_poll_s": list(IDLE_POLL_S),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        },
    }
    emit_json(out)


if __name__ == "__main__":
    t0 = time.perf_counter()
    with json_stdout():
        main()
    print(f"benchmark took {time.perf_counter() - t0:.1f}s", file=sys.stderr)
