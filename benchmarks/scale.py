"""Capacity of one store process and one endpoint process, fed by simulated runners.

Run ``python benchmarks/scale.py``; prints one JSON line ``{"levels": [...], ...}``, one entry per
(rollouts in flight, LLM calls per rollout) level: 64, 256 and 1024 in flight, 1 and 16 calls.

Processes (2 shared cores here, so everyone competes for them, as on a one-machine deployment):

* the store: ``agl-tinker store``'s server (:func:`agl_tinker.store_server.serve_store`);
* the endpoint: the lean policy endpoint over an instant sampler (no model cost: the answer is
  pre-tokenized), recording every call's span into the store over HTTP, as a split deployment does
  (in one-command and Ray modes it writes in-process, which costs the store less);
* the runners: two processes of ``in_flight / 2`` coroutines. Each coroutine is one runner slot
  that, per rollout, makes the store calls an Agent-lightning runner makes (``start_rollout``:
  create and claim; ``get_next_span_sequence_id`` + ``add_span``: the reward; ``update_attempt``:
  succeeded) and ``calls_per_rollout`` chat completions against the endpoint. One store client
  (one HTTP connection pool) per 32 slots, as several runner processes would have.

Per level, after a warm-up, for ``AGL_BENCH_SECONDS`` (default 8): ``rollouts_per_s``,
``calls_per_s``; ``dispatch_p50_ms``/``dispatch_p99_ms``: one rollout's store round trips as a
runner sees them (claim + reward + finish, summed); ``call_p50_ms``/``call_p99_ms``: one chat
completion; ``errors``: failed requests of either kind; ``store_cpu_frac``/``endpoint_cpu_frac``:
CPU seconds per wall second of each process (1.0 = one core); ``store_rss_mb``/``endpoint_rss_mb``.
The algorithm's reads (``query_spans``, wait-for-any) are not driven here: ``dispatch.py``
measures them.

``AGL_BENCH_LEVELS=1024x16`` runs chosen levels only; ``AGL_BENCH_PROFILE_DIR=DIR`` also records
the store and the endpoint with ``py-spy`` (collapsed stacks, one file per process and level).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs

from agl_tinker.net import free_port

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
LEVELS = [
    (int(n), int(c))
    for n, c in (
        level.split("x")
        for level in os.environ.get("AGL_BENCH_LEVELS", "64x1,64x16,256x1,256x16,1024x1,1024x16").split(",")
    )
]
PROFILE_DIR = os.environ.get("AGL_BENCH_PROFILE_DIR")  # py-spy profiles of the store and the endpoint
SECONDS = float(os.environ.get("AGL_BENCH_SECONDS", "8"))
WARMUP_S = 2.0
RUNNER_PROCESSES = 2
SLOTS_PER_CLIENT = 32
START_TIMEOUT_S = 180.0


def _quiet() -> None:
    import logging

    logging.disable(logging.WARNING)


# ------------------------------------------------------------------------------ child processes


def _store_main(port: int) -> None:
    _quiet()
    from agl_tinker.store_server import serve_store

    asyncio.run(serve_store("127.0.0.1", port))


def _endpoint_main(store_url: str, ready: Any) -> None:
    _quiet()
    asyncio.run(_endpoint(store_url, ready))


async def _endpoint(store_url: str, ready: Any) -> None:
    from agentlightning.store.client_server import LightningStoreClient
    from endpoint import InstantSampler  # benchmarks/endpoint.py

    from agl_tinker.backend import get_tokenizer
    from agl_tinker.endpoint.start import EndpointConfig, start_endpoint

    tokenizer = get_tokenizer(MODEL)
    store = LightningStoreClient(store_url)
    endpoint = await start_endpoint(
        EndpointConfig(mode="lean"),
        store=store,
        sampling_client=InstantSampler(tokenizer),
        base_model=MODEL,
        tokenizer=tokenizer,
    )
    ready.put(endpoint.as_resource("RID", "AID").endpoint)
    await asyncio.Event().wait()  # until terminated


def _runners_main(store_url: str, url_template: str, slots: int, calls: int, go: Any, out: Any) -> None:
    _quiet()
    import agentlightning  # noqa: F401  # the imports take seconds: before the clock starts

    out.put("ready")
    start_at = go.get()
    out.put(asyncio.run(_runners(store_url, url_template, slots, calls, start_at)))


async def _runners(
    store_url: str, url_template: str, slots: int, calls: int, start_at: float
) -> dict[str, Any]:
    import agentlightning as agl
    import aiohttp
    from agentlightning.store.client_server import LightningStoreClient
    from agentlightning.types import Span

    stop_at = start_at + WARMUP_S + SECONDS
    clients = [LightningStoreClient(store_url) for _ in range(max(1, slots // SLOTS_PER_CLIENT))]
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    )
    measure_from = start_at + WARMUP_S
    stats: dict[str, Any] = {"rollouts": 0, "calls": 0, "errors": 0, "dispatch_ms": [], "call_ms": []}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}

    async def slot(i: int) -> None:
        store = clients[i % len(clients)]
        while time.time() < stop_at:
            counted = time.time() >= measure_from
            try:
                t = time.perf_counter()
                rollout = await store.start_rollout(input={"slot": i})
                dispatch = time.perf_counter() - t
                rid, aid = rollout.rollout_id, rollout.attempt.attempt_id
                url = url_template.replace("RID", rid).replace("AID", aid) + "/chat/completions"
                for _ in range(calls):
                    t = time.perf_counter()
                    async with http.post(url, json=body) as response:
                        await response.read()
                        ok = response.status == 200
                    if counted and time.time() <= stop_at:
                        stats["call_ms"].append((time.perf_counter() - t) * 1000)
                        stats["calls" if ok else "errors"] += 1
                t = time.perf_counter()
                core = agl.emit_reward(1.0, propagate=False)
                seq = await store.get_next_span_sequence_id(rid, aid)
                await store.add_span(
                    Span.from_core_fields(core, rollout_id=rid, attempt_id=aid, sequence_id=seq)
                )
                await store.update_attempt(rid, aid, status="succeeded")
                dispatch += time.perf_counter() - t
                if counted and time.time() <= stop_at:
                    stats["rollouts"] += 1
                    stats["dispatch_ms"].append(dispatch * 1000)
            except Exception:
                if counted and time.time() <= stop_at:
                    stats["errors"] += 1
                await asyncio.sleep(0.05)  # ok: back off after a failed request

    tasks = [asyncio.create_task(slot(i)) for i in range(slots)]
    await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.time()) + 1.0)
    for task in tasks:  # a request still out at the end is not waited for (nor counted)
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await http.close()
    for client in clients:
        await client.close()
    return stats


# ------------------------------------------------------------------------------------ driver


def _pct(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


def _profile(procs: dict[str, Any], level: str) -> list[Any]:
    """``py-spy record`` of each server process for the measured seconds (collapsed stacks)."""
    import subprocess

    assert PROFILE_DIR is not None
    Path(PROFILE_DIR).mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(p.pid),
                "--duration",
                str(int(SECONDS)),
                "--rate",
                "50",
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                f"{PROFILE_DIR}/{name}-{level}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, p in procs.items()
    ]


def _level(
    ctx: Any, store_url: str, url_template: str, procs: dict[str, Any], in_flight: int, calls: int
) -> dict[str, Any]:
    import psutil

    watched = {name: psutil.Process(p.pid) for name, p in procs.items()}
    out, go = ctx.Queue(), ctx.Queue()
    runners = [
        ctx.Process(
            target=_runners_main,
            args=(store_url, url_template, in_flight // RUNNER_PROCESSES, calls, go, out),
        )
        for _ in range(RUNNER_PROCESSES)
    ]
    for r in runners:
        r.start()
    for _ in runners:
        out.get(timeout=START_TIMEOUT_S)  # "ready": imported
    start_at = time.time() + 0.2
    for _ in runners:
        go.put(start_at)
    stop_at = start_at + WARMUP_S + SECONDS
    time.sleep(max(0.0, start_at + WARMUP_S - time.time()))  # the warm-up
    profilers = _profile(procs, f"{in_flight}x{calls}") if PROFILE_DIR else []
    cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in watched.items()}
    t0 = time.time()
    time.sleep(max(0.0, stop_at - time.time()))
    cpu = {name: (sum(p.cpu_times()[:2]) - cpu0[name]) / (time.time() - t0) for name, p in watched.items()}
    rss = {name: p.memory_info().rss / 2**20 for name, p in watched.items()}
    parts = [out.get(timeout=START_TIMEOUT_S) for _ in runners]
    for profiler in profilers:
        profiler.wait(timeout=60)
    for r in runners:
        r.join(timeout=30)
        if r.is_alive():
            r.terminate()
    dispatch = [x for part in parts for x in part["dispatch_ms"]]
    call = [x for part in parts for x in part["call_ms"]]
    return {
        "in_flight": in_flight,
        "calls_per_rollout": calls,
        "rollouts_per_s": round(sum(p["rollouts"] for p in parts) / SECONDS, 1),
        "calls_per_s": round(sum(p["calls"] for p in parts) / SECONDS, 1),
        "dispatch_p50_ms": _pct(dispatch, 0.5),
        "dispatch_p99_ms": _pct(dispatch, 0.99),
        "call_p50_ms": _pct(call, 0.5),
        "call_p99_ms": _pct(call, 0.99),
        "errors": sum(p["errors"] for p in parts),
        "store_cpu_frac": round(cpu["store"], 2),
        "endpoint_cpu_frac": round(cpu["endpoint"], 2),
        "store_rss_mb": round(rss["store"], 1),
        "endpoint_rss_mb": round(rss["endpoint"], 1),
    }


def main() -> None:
    from agl_tinker.runners.store_wait import wait_for_store

    ctx = mp.get_context("spawn")
    port = free_port()
    store_url = f"http://127.0.0.1:{port}"
    store = ctx.Process(target=_store_main, args=(port,), daemon=True)
    store.start()
    ready = ctx.Queue()
    endpoint = ctx.Process(target=_endpoint_main, args=(store_url, ready), daemon=True)
    try:
        if not asyncio.run(wait_for_store(store_url, timeout_s=START_TIMEOUT_S)):
            raise RuntimeError("the store server did not start")
        endpoint.start()
        url_template = ready.get(timeout=START_TIMEOUT_S)
        procs = {"store": store, "endpoint": endpoint}
        levels = []
        for n, calls in LEVELS:
            levels.append(_level(ctx, store_url, url_template, procs, n, calls))
            print(levels[-1], file=sys.stderr, flush=True)
    finally:
        for p in (endpoint, store):
            if p.is_alive():
                p.terminate()
                p.join(10)
    by = {(lv["in_flight"], lv["calls_per_rollout"]): lv for lv in levels}
    kept = {
        str(calls): round(by[(1024, calls)]["calls_per_s"] / max(by[(64, calls)]["calls_per_s"], 1e-9), 2)
        for calls in (1, 16)
        if (1024, calls) in by and (64, calls) in by
    }
    emit_json({"levels": levels, "calls_per_s_1024_vs_64": kept, "cpus": os.cpu_count(), "seconds": SECONDS})


if __name__ == "__main__":
    with json_stdout():
        main()
