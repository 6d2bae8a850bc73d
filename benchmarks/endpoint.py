"""Endpoint overhead: lean server vs Agent-lightning's LLMProxy, same provider over an instant simulator.

Run ``python benchmarks/endpoint.py``; prints one JSON object. Clients are ``openai.OpenAI`` on the
rollout path in a separate process (so their CPU does not share the server's GIL); every call is
recorded as a span. The swap is timed while 16 clients keep calling.

``routes`` compares the lean endpoint's three APIs in the same run (issue 32): chat completions
(``openai``), Responses (``openai``'s ``responses.create``) and Anthropic Messages (``anthropic``),
one equivalent request each, at 1 and 16 clients: per-call latency and the server process's CPU per
call (``time.process_time`` of this process, which holds the server thread and not the clients),
and each route's 1-client p50 and CPU over chat's (target: within 1.5x). ``capture_proxy`` is
tinker-cookbook's capture proxy on chat completions and Messages, in the same rounds
(:func:`measure_cpu`); ``lean_vs_capture_cpu`` is the lean endpoint's CPU per call over the capture
proxy's plus its store daemon's (target: <= 1). ``AGL_BENCH_ROUNDS`` (default 5) rounds of
``AGL_BENCH_SECONDS / 2`` seconds per route; ``load_average`` is the 1-minute load at the start and
the end of the run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

from _capture_proxy import capture_proxy  # benchmarks/ is on sys.path when a script runs
from _rounds import FullCollections, figures
from _stdout import emit_json, json_stdout

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
SECONDS = float(os.environ.get("AGL_BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("AGL_BENCH_ROUNDS", "5"))
ROUND_SECONDS = SECONDS / 2
LEAN_ROUTES = ("chat", "responses", "messages")
CAPTURE_ROUTES = ("chat", "messages")
ANSWER = "Hello! How can I help you today?"


class InstantSampler:
    """A sampling client that answers a fixed, pre-tokenized message at once.

    It isolates the endpoint's own cost (HTTP, validation, rendering, LiteLLM, parsing, spans)
    from the model's, as the issue's measurements of LLMProxy and aiohttp did.
    """

    def __init__(self, tokenizer: Any) -> None:
        import numpy as np
        import tinker

        tokens = [*tokenizer.encode(ANSWER), tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self._response = tinker.SampleResponse(
            sequences=[
                tinker.SampledSequence(
                    stop_reason="stop",
                    sequence_id="instant",
                    tokens_np=np.asarray(tokens, dtype=np.int32),
                    logprobs_np=np.full(len(tokens), -0.1, dtype=np.float32),
                )
            ]
        )

    async def sample(self, prompt: Any, num_samples: int, sampling_params: Any) -> Any:
        return self._response


def _caller(url: str, route: str) -> Any:
    """One client's call of ``route`` (chat, responses, messages) at ``url`` (ending in ``/v1``)."""
    import anthropic
    import openai

    if route == "messages":
        claude = anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="bench", max_retries=0)
        return lambda: claude.messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        )
    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0)
    if route == "responses":
        return lambda: client.responses.create(model=MODEL, input="Hi", max_output_tokens=16)
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
    return lambda: client.chat.completions.create(**ask)


def drive(url: str, clients: int, seconds: float, route: str = "chat") -> dict[str, Any]:
    """Run ``clients`` threads calling ``route`` at ``url`` for ``seconds``; latencies in ms and failures."""
    latencies: list[float] = []
    failures = [0]
    warmed = threading.Barrier(clients, action=lambda: deadline.append(time.perf_counter() + seconds))
    deadline: list[float] = []

    def loop() -> None:
        call = _caller(url, route)
        call()  # warm the connection (and the SDK's lazy imports) before the clock starts
        warmed.wait()
        while time.perf_counter() < deadline[0]:
            t = time.perf_counter()
            try:
                call()
                latencies.append((time.perf_counter() - t) * 1000)
            except Exception:
                failures[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "latencies": latencies,
        "failures": failures[0],
        "elapsed": time.perf_counter() - (deadline[0] - seconds),
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else float("nan")


class _Target(NamedTuple):
    """One server's route that the CPU rounds drive."""

    server: str
    """``lean`` or ``capture``."""
    route: str
    url: str
    flush: Callable[[], Awaitable[None]]
    """Waits until every call answered so far is recorded (recording is part of a call's cost)."""
    daemon_cpu_seconds: Callable[[], float] | None = None
    """CPU seconds so far of the process the server records into, when that is another one."""


async def _window(
    pool: concurrent.futures.ProcessPoolExecutor, target: _Target, clients: int
) -> dict[str, Any]:
    """One :func:`drive` of ``target`` with ``clients`` clients for ``ROUND_SECONDS``: its p50 latency,
    this process's CPU per call (the clients' warm-up calls counted), the store daemon's, failures."""
    await target.flush()
    cpu = time.process_time()
    daemon = target.daemon_cpu_seconds() if target.daemon_cpu_seconds else float("nan")
    run = await asyncio.get_running_loop().run_in_executor(
        pool, drive, target.url, clients, ROUND_SECONDS, target.route
    )
    await target.flush()
    calls = max(len(run["latencies"]) + clients, 1)
    window = {
        "p50": _pct(run["latencies"], 0.5),
        "cpu": (time.process_time() - cpu) * 1000 / calls,
        "calls": calls,
        "failures": run["failures"],
    }
    if target.daemon_cpu_seconds:
        window["daemon"] = (target.daemon_cpu_seconds() - daemon) * 1000 / calls
    return window


async def measure(
    mode: str, pool: concurrent.futures.ProcessPoolExecutor, instant: bool = True
) -> dict[str, Any]:
    from agentlightning.store.memory import InMemoryLightningStore
    from agentlightning.store.threading import LightningStoreThreaded

    from agl_tinker.backend import get_tokenizer, service_client
    from agl_tinker.endpoint.start import EndpointConfig, start_endpoint

    tokenizer = get_tokenizer(MODEL)
    sampler: Any = (
        InstantSampler(tokenizer)
        if instant
        else await service_client(latency_s=0.0).create_sampling_client(base_model=MODEL)
    )
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(mode=mode),  # type: ignore[arg-type]
        store=store,
        sampling_client=sampler,
        base_model=MODEL,
        tokenizer=tokenizer,
    )
    loop = asyncio.get_running_loop()
    try:
        rollout = await store.start_rollout(input={"bench": mode})
        url = endpoint.as_resource(rollout.rollout_id, rollout.attempt.attempt_id).endpoint
        result: dict[str, Any] = {"overhead_ms_p50": {}, "overhead_ms_p99": {}, "calls_per_s": {}}
        failed = 0
        for clients in (1, 16):
            run = await loop.run_in_executor(pool, drive, url, clients, SECONDS)
            result["overhead_ms_p50"][str(clients)] = _pct(run["latencies"], 0.5)
            result["overhead_ms_p99"][str(clients)] = _pct(run["latencies"], 0.99)
            result["calls_per_s"][str(clients)] = round(len(run["latencies"]) / run["elapsed"], 1)
            failed += run["failures"]
        load = loop.run_in_executor(pool, drive, url, 16, SECONDS)
        swaps: list[float] = []
        await asyncio.sleep(SECONDS / 4)
        for version in range(1, 21):
            t = time.perf_counter()
            endpoint.swap(sampler, version)
            swaps.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(SECONDS / 40)
        run = await load
        failed += run["failures"]
        await endpoint.flush()
        result["swap_ms_p50"] = round(statistics.median(swaps), 4)
        result["failed_requests"] = failed
        result["spans_recorded"] = len(await store.query_spans(rollout.rollout_id))
        return result
    finally:
        await endpoint.stop()


async def measure_cpu(pool: concurrent.futures.ProcessPoolExecutor, data_dir: Path) -> dict[str, Any]:
    """Server CPU per call of the lean endpoint's three APIs and of the armed capture proxy's two
    (:mod:`_capture_proxy`), in alternating rounds: each round drives every route of both servers
    once (the order reversed every other round), at 1 client, then the rounds at 16. A route's
    figure is the median of its ``ROUNDS`` windows, so a burst of load from elsewhere moves one
    window, not the figure.

    Both servers live in this process and are built before the lean endpoint starts, whose start
    freezes what either was built from (:func:`agl_tinker.heavy_import.freeze_survivors`): full
    collections walk neither's objects. Each server has answered one call per route before the
    rounds: a route's first call pays one-time lazy imports (about 1 s for Messages). The lean
    endpoint records into a store in this process, so its CPU holds recording; the capture proxy's
    store daemon is another process, reported beside it as ``store_daemon_cpu_ms_per_call``:
    ``lean_vs_capture_cpu`` compares the lean figure with the sum of the two (target: <= 1).
    ``full_collections`` counts the process's full collections during the rounds and their time."""
    from agentlightning.store.memory import InMemoryLightningStore
    from agentlightning.store.threading import LightningStoreThreaded

    from agl_tinker.backend import get_tokenizer
    from agl_tinker.endpoint.start import EndpointConfig, start_endpoint

    tokenizer = get_tokenizer(MODEL)
    sampler = InstantSampler(tokenizer)
    full_collections = FullCollections()
    with capture_proxy(sampler, tokenizer, MODEL, data_dir) as capture:
        store = LightningStoreThreaded(InMemoryLightningStore())
        endpoint = await start_endpoint(
            EndpointConfig(), store=store, sampling_client=sampler, base_model=MODEL, tokenizer=tokenizer
        )
        try:
            rollout = await store.start_rollout(input={"bench": "routes"})
            url = endpoint.as_resource(rollout.rollout_id, rollout.attempt.attempt_id).endpoint
            targets = [_Target("lean", route, url, endpoint.flush) for route in LEAN_ROUTES] + [
                _Target(
                    "capture",
                    route,
                    capture.url,
                    lambda: asyncio.to_thread(capture.flush),
                    capture.daemon_cpu_seconds,
                )
                for route in CAPTURE_ROUTES
            ]
            loop = asyncio.get_running_loop()
            for target in targets:  # each route's first call: see above
                await loop.run_in_executor(pool, drive, target.url, 1, 0.0, target.route)
            windows: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {
                (t.server, t.route): {1: [], 16: []} for t in targets
            }
            gc.callbacks.append(full_collections.observe)
            for clients in (1, 16):
                for round_ in range(ROUNDS):
                    for target in targets if round_ % 2 == 0 else targets[::-1]:
                        window = await _window(pool, target, clients)
                        windows[target.server, target.route][clients].append(window)
        finally:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(full_collections.observe)
            await endpoint.stop()
    routes: dict[str, Any] = {route: figures(windows["lean", route]) for route in LEAN_ROUTES}
    captured = {route: figures(windows["capture", route]) for route in CAPTURE_ROUTES}
    chat = routes["chat"]
    routes["p50_vs_chat_1_client"] = {
        route: round(routes[route]["overhead_ms_p50"]["1"] / chat["overhead_ms_p50"]["1"], 3)
        for route in LEAN_ROUTES[1:]
    }
    routes["server_cpu_vs_chat"] = {
        route: {
            c: round(routes[route]["server_cpu_ms_per_call"][c] / chat["server_cpu_ms_per_call"][c], 3)
            for c in ("1", "16")
        }
        for route in LEAN_ROUTES[1:]
    }
    versus = {
        route: {
            c: round(
                routes[route]["server_cpu_ms_per_call"][c]
                / (
                    captured[route]["server_cpu_ms_per_call"][c]
                    + captured[route]["store_daemon_cpu_ms_per_call"][c]
                ),
                3,
            )
            for c in ("1", "16")
        }
        for route in CAPTURE_ROUTES
    }
    return {
        "routes": routes,
        "capture_proxy": captured,
        "lean_vs_capture_cpu": versus,
        "full_collections": {"count": full_collections.count, "seconds": round(full_collections.seconds, 3)},
    }


async def main() -> None:
    load = [round(os.getloadavg()[0], 2)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        lean = await measure("lean", pool)
        baseline = await measure("proxy", pool)
        with_model = await measure("lean", pool, instant=False)
        with tempfile.TemporaryDirectory() as data_dir:
            cpu = await measure_cpu(pool, Path(data_dir))
    with_model = {k: with_model[k] for k in ("overhead_ms_p50", "calls_per_s")}
    load.append(round(os.getloadavg()[0], 2))
    emit_json(
        {
            **lean,
            "baseline": baseline,
            "lean_with_simulated_model": with_model,
            **cpu,
            "rounds": ROUNDS,
            "round_seconds": ROUND_SECONDS,
            "load_average": load,
        }
    )


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    with json_stdout():
        asyncio.run(main())
