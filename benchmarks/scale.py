"""Capacity of one store process and one endpoint process, fed by simulated runners.

Run ``python benchmarks/scale.py``; prints one JSON line ``{"levels": [...], ...}``, one entry per
(rollouts in flight, LLM calls per rollout) level: 64, 256 and 1024 in flight, 1 and 16 calls,
1024 idle runners (``1024x0``: nothing enqueued, every runner polls the empty queue), and the
offered level ``1024x16m``: 1024 in flight whose calls each also take a model's time (0.8 s to the
first token + 30 ms per token, ``async_training.py``'s cost model), so that the servers see the
load real rollouts offer instead of a closed loop of instant calls.

Processes (2 shared cores here, so everyone competes for them, as on a one-machine deployment):

* the store: ``agl-tinker store``'s server (:func:`agl_tinker.split_store.serve_store`);
* the endpoint: the lean policy endpoint over an instant sampler (no model cost: the answer is
  pre-tokenized), recording every call's span into the store over HTTP, as a split deployment does
  (in one-command and Ray modes it writes in-process, which costs the store less);
* the load: one process per level (``benchmarks/_scale_load.py``) of ``in_flight`` runner slots
  making, with raw HTTP calls, the store calls ``fast_runner()`` makes per rollout (dequeue,
  resources on a snapshot's first rollout, reward span, finish) and ``calls_per_rollout`` chat
  completions, plus the algorithm's enqueue and release; it costs a fraction of what the servers
  do per request.

Per level, after a warm-up (until every slot has finished a rollout, at most 60 s), for
``AGL_BENCH_SECONDS`` (default 8): ``rollouts_per_s``, ``calls_per_s`` (finished in the window);
``dispatch_p50_ms``/``dispatch_p99_ms``: one rollout's store round trips as its runner sees them
(dequeue + resources + reward + finish, summed) of the rollouts finished in the window (at 1024 in
flight, rollouts that outlast the window began before it), with its mean (the Little's-law figure: a p99
near it says no request starves), its start (dequeue + resources, every one in the window) and
finish (reward + finish) parts; ``store_req_*``: one store request, and ``store_by_kind``: rate, mean, p50, p99 per kind
(``dequeue_empty``: a poll of an empty queue); ``store_requests_out_mean``: requests the store
held on average (Little's L); ``runner_store_requests_per_rollout``;
``call_p50_ms``/``call_p99_ms``: one chat completion; ``errors`` (and ``error_kinds``): failed
requests; per process (``store``, ``endpoint``, ``load``): ``*_cpu_frac``, CPU seconds per wall
second (1.0 = one core); ``*_loop_runnable_frac``, the part of the window its main thread (the
event loop) was running or waiting for a CPU (near 1.0: saturated, it always had work);
``*_loop_cpu_wait_frac``, the part it waited for a CPU (others' load); ``*_rss_mb``. And the CPU
costs the ceilings follow from, whatever the machine's load: ``store_cpu_ms_per_rollout``,
``store_cpu_ms_per_request``, ``endpoint_cpu_ms_per_call``; ``work_per_cpu_1024_vs_64``: the
work a CPU second does at 1024 in flight over that at 64, per server and calls per rollout (1.0:
no collapse, whatever share of the machine each level got). The algorithm's reads
(``query_spans``, wait-for-any) are not driven here: ``dispatch.py`` measures them.

``AGL_BENCH_LEVELS=1024x16`` runs chosen levels only; ``AGL_BENCH_PROFILE_DIR=DIR`` also records
the store and the endpoint with ``py-spy`` (collapsed stacks, one file per process and level);
``AGL_BENCH_UVLOOP=1`` runs both servers' event loops on uvloop; ``AGL_BENCH_MODEL_TOKENS=N``
charges each offered call's model time for N tokens instead of the answer's own (~10).
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
DEFAULT_LEVELS = "64x1,64x16,256x1,256x16,1024x1,1024x16,1024x0,1024x16m"


def parse_level(level: str) -> tuple[int, int, bool]:
    """``"1024x16"`` -> (in flight, calls per rollout, False); an ``m`` suffix (``"1024x16m"``): each
    call also takes the model's time of ``async_training.py``'s cost model (the offered level)."""
    offered = level.endswith("m")
    n, calls = level.removesuffix("m").split("x")
    return int(n), int(calls), offered


LEVELS = [parse_level(level) for level in os.environ.get("AGL_BENCH_LEVELS", DEFAULT_LEVELS).split(",")]
PROFILE_DIR = os.environ.get("AGL_BENCH_PROFILE_DIR")  # py-spy profiles of the store and the endpoint
SECONDS = float(os.environ.get("AGL_BENCH_SECONDS", "8"))
# tokens each offered call's model time is charged for (default: the instant answer's own, ~10: ~1.1 s)
MODEL_TOKENS = int(os.environ["AGL_BENCH_MODEL_TOKENS"]) if "AGL_BENCH_MODEL_TOKENS" in os.environ else None
START_TIMEOUT_S = 180.0


def _quiet() -> None:
    import logging

    logging.disable(logging.WARNING)


# ------------------------------------------------------------------------------ child processes


def _run(main: Any) -> None:
    """``asyncio.run(main)``, on uvloop with ``AGL_BENCH_UVLOOP=1``."""
    if os.environ.get("AGL_BENCH_UVLOOP") == "1":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def _store_main(port: int) -> None:
    _quiet()
    from agl_tinker.split_store import serve_store

    _run(serve_store("127.0.0.1", port))


def _endpoint_main(store_url: str, ready: Any) -> None:
    _quiet()
    _run(_endpoint(store_url, ready))


async def _endpoint(store_url: str, ready: Any) -> None:
    from agentlightning.store.client_server import LightningStoreClient
    from agentlightning.types import NamedResources
    from endpoint import InstantSampler
    from pydantic import TypeAdapter  # benchmarks/endpoint.py

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
    resources = TypeAdapter(NamedResources).dump_python({"main_llm": endpoint.as_resource()}, mode="json")
    ready.put({"template": endpoint.as_resource("RID", "AID").endpoint, "resources": resources})
    await asyncio.Event().wait()  # until terminated


# ------------------------------------------------------------------------------------ driver


def _pct(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _by_kind(part: dict[str, Any], window: float) -> dict[str, dict[str, float | None]]:
    """Per kind of store request (dequeue, dequeue_empty, resources, ...): rate, mean, p50, p99."""
    return {
        kind: {
            "per_s": round(len(ms) / window, 1),
            "mean_ms": _mean(ms),
            "p50_ms": _pct(ms, 0.5),
            "p99_ms": _pct(ms, 0.99),
        }
        for kind, ms in sorted(part["store_ms_by_kind"].items())
    }


def _per(total: float, count: int) -> float | None:
    return round(total / count, 3) if count else None


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


_RUNNER_KINDS = ("dequeue", "resources", "sequence_id", "span", "finish")  # a runner's store calls


def _level(
    ctx: Any,
    store_url: str,
    served: dict[str, Any],
    procs: dict[str, Any],
    n: int,
    calls: int,
    offered: bool,
) -> dict[str, Any]:
    """One level: a fresh load process drives the servers; its window's figures."""
    from _scale_load import Load, run_level  # benchmarks/_scale_load.py
    from async_training import COST_MODEL  # benchmarks/async_training.py: the model's time per call

    model = (COST_MODEL["sample_ttft_s"], COST_MODEL["sample_token_s"]) if offered else (0.0, 0.0)
    load = Load(
        store_url, served["template"], served["resources"], n, calls, SECONDS, MODEL, *model, MODEL_TOKENS
    )
    out = ctx.Queue()
    child = ctx.Process(target=run_level, args=(load, {k: p.pid for k, p in procs.items()}, out))
    child.start()
    profilers: list[Any] = []
    if PROFILE_DIR:
        time.sleep(5.0)  # into the level (past most of the warm-up)
        profilers = _profile(procs, f"{n}x{calls}{'m' if offered else ''}")
    part = out.get(timeout=START_TIMEOUT_S + SECONDS)
    child.join(timeout=30)
    for profiler in profilers:
        profiler.wait(timeout=60)
    window = part["seconds"]
    by_kind = _by_kind(part, window)
    runner_requests = sum(len(part["store_ms_by_kind"].get(k, [])) for k in _RUNNER_KINDS)
    return {
        "in_flight": n,
        "calls_per_rollout": calls,
        "offered": offered,
        "model_s_per_call": _mean(part["model_s"]) if offered else 0.0,
        "rollouts_per_s": round(part["rollouts"] / part["seconds"], 1),
        "calls_per_s": round(part["calls"] / part["seconds"], 1),
        "dispatch_p50_ms": _pct(part["dispatch_ms"], 0.5),
        "dispatch_p99_ms": _pct(part["dispatch_ms"], 0.99),
        # fairness: Little's law gives the mean; a p99 near it says nobody starves
        "dispatch_mean_ms": _mean(part["dispatch_ms"]),
        "dispatch_start_p50_ms": _pct(part["dispatch_start_ms"], 0.5),  # dequeue + resources
        "dispatch_start_p99_ms": _pct(part["dispatch_start_ms"], 0.99),
        "dispatch_finish_p50_ms": _pct(part["dispatch_finish_ms"], 0.5),  # reward + finish
        "dispatch_finish_p99_ms": _pct(part["dispatch_finish_ms"], 0.99),
        "store_req_mean_ms": _mean(part["store_ms"]),
        "store_requests_out_mean": part["store_requests_out_mean"],  # Little's L at the store
        "store_by_kind": by_kind,
        "runner_store_requests_per_rollout": _per(runner_requests, part["rollouts"]),
        "store_req_p50_ms": _pct(part["store_ms"], 0.5),
        "store_req_p99_ms": _pct(part["store_ms"], 0.99),
        "call_p50_ms": _pct(part["call_ms"], 0.5),
        "call_p99_ms": _pct(part["call_ms"], 0.99),
        "errors": part["errors"],
        "error_kinds": part["error_kinds"],
        **{k: v for k, v in part.items() if k.endswith(("_frac", "_rss_mb"))},
        "store_requests_per_s": round(len(part["store_ms"]) / window, 1),
        "dequeues_per_s": round(part["dequeues"] / window, 1),
        "empty_dequeues_per_s": round(part["empty_dequeues"] / window, 1),
        # CPU cost, so ceilings with a core each (this machine is shared: the fractions above are
        # what the scheduler gave, the costs what the work takes)
        "store_cpu_ms_per_rollout": _per(part["store_cpu_frac"] * window * 1000, part["rollouts"]),
        "store_cpu_ms_per_request": _per(part["store_cpu_frac"] * window * 1000, len(part["store_ms"])),
        "endpoint_cpu_ms_per_call": _per(part["endpoint_cpu_frac"] * window * 1000, part["calls"]),
        "warmup_s": part["warmup_s"],
        "loadavg_1m": part["loadavg_1m"],
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
        served = ready.get(timeout=START_TIMEOUT_S)
        procs = {"store": store, "endpoint": endpoint}
        levels = []
        for n, calls, offered in LEVELS:
            levels.append(_level(ctx, store_url, served, procs, n, calls, offered))
            print(levels[-1], file=sys.stderr, flush=True)
    finally:
        for p in (endpoint, store):
            if p.is_alive():
                p.terminate()
                p.join(10)
    by = {(lv["in_flight"], lv["calls_per_rollout"]): lv for lv in levels if not lv["offered"]}
    kept = {
        str(calls): round(by[(1024, calls)]["calls_per_s"] / max(by[(64, calls)]["calls_per_s"], 1e-9), 2)
        for calls in (1, 16)
        if (1024, calls) in by and (64, calls) in by
    }
    # the same in CPU cost per unit of work, which the machine's other load does not move
    cost = {
        f"{server}_{calls}": round(by[(64, calls)][key] / max(by[(1024, calls)][key] or 0, 1e-9), 2)
        for calls in (1, 16)
        for server, key in (("store", "store_cpu_ms_per_request"), ("endpoint", "endpoint_cpu_ms_per_call"))
        if (1024, calls) in by and (64, calls) in by and by[(64, calls)][key] is not None
    }
    emit_json(
        {
            "levels": levels,
            "calls_per_s_1024_vs_64": kept,
            "work_per_cpu_1024_vs_64": cost,
            "cpus": os.cpu_count(),
            "seconds": SECONDS,
        }
    )


if __name__ == "__main__":
    with json_stdout():
        main()
