"""Endpoint overhead: lean server vs Agent-lightning's LLMProxy, same provider over an instant simulator.

Run ``python benchmarks/endpoint.py``; prints one JSON object. Clients are ``openai.OpenAI`` on the
rollout path in a separate process (so their CPU does not share the server's GIL); every call is
recorded as a span. The swap is timed while 16 clients keep calling.

``routes`` compares the lean endpoint's three APIs in the same run (issue 32): chat completions
(``openai``), Responses (``openai``'s ``responses.create``) and Anthropic Messages (``anthropic``),
one equivalent request each, at 1 and 16 clients: per-call latency and the server process's CPU per
call (``time.process_time`` of this process, which holds the server thread and not the clients),
and each route's 1-client p50 over chat's (target: within 1.5x).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
SECONDS = float(os.environ.get("AGL_BENCH_SECONDS", "4"))
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


def _route_figures() -> dict[str, Any]:
    """One route's figures, before any run is added (:func:`_add_run`)."""
    return {"overhead_ms_p50": {}, "server_cpu_ms_per_call": {}, "failed_requests": 0}


def _add_run(figures: dict[str, Any], clients: int, run: dict[str, Any], cpu_start: float) -> None:
    """Add one :func:`drive` run with ``clients`` clients to ``figures``: its p50 latency, this
    process's CPU since ``cpu_start`` per call (the clients' warm-up calls too) and its failures.

    Each server has answered one call on the route before ``cpu_start``: a route's first call pays
    one-time lazy imports (about 1 s for Messages), which at 1 client would otherwise be spread
    over a few hundred calls and read as several ms of CPU per call."""
    calls = len(run["latencies"]) + clients
    figures["overhead_ms_p50"][str(clients)] = _pct(run["latencies"], 0.5)
    figures["server_cpu_ms_per_call"][str(clients)] = round(
        (time.process_time() - cpu_start) * 1000 / max(calls, 1), 3
    )
    figures["failed_requests"] += run["failures"]


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


async def measure_routes(pool: concurrent.futures.ProcessPoolExecutor) -> dict[str, Any]:
    """The lean endpoint's three APIs, same run: latency and server CPU per call at 1 and 16 clients."""
    from agentlightning.store.memory import InMemoryLightningStore
    from agentlightning.store.threading import LightningStoreThreaded

    from agl_tinker.backend import get_tokenizer
    from agl_tinker.endpoint.start import EndpointConfig, start_endpoint

    tokenizer = get_tokenizer(MODEL)
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(),
        store=store,
        sampling_client=InstantSampler(tokenizer),
        base_model=MODEL,
        tokenizer=tokenizer,
    )
    loop = asyncio.get_running_loop()
    routes: dict[str, Any] = {}
    try:
        rollout = await store.start_rollout(input={"bench": "routes"})
        url = endpoint.as_resource(rollout.rollout_id, rollout.attempt.attempt_id).endpoint
        for route in ("chat", "responses", "messages"):
            figures = _route_figures()
            await loop.run_in_executor(
                pool, drive, url, 1, 0.0, route
            )  # the server's first call: see _add_run
            for clients in (1, 16):
                await endpoint.flush()
                cpu = time.process_time()
                run = await loop.run_in_executor(pool, drive, url, clients, SECONDS, route)
                await endpoint.flush()  # recording is part of a call's cost
                _add_run(figures, clients, run, cpu)
            routes[route] = figures
    finally:
        await endpoint.stop()
    chat = routes["chat"]["overhead_ms_p50"]["1"]
    routes["p50_vs_chat_1_client"] = {
        route: round(routes[route]["overhead_ms_p50"]["1"] / chat, 3) for route in ("responses", "messages")
    }
    return routes


def _instant_tinker_client(tokenizer: Any) -> Any:
    """The instant sampler as a ``tinker.SamplingClient`` subclass, so the capture proxy's SDK
    instrumentation (which patches ``SamplingClient.sample_async``) records its calls; ``sample``,
    which the SDK's ``sample_async`` delegates to, answers at once."""
    import tinker

    instant = InstantSampler(tokenizer)

    class InstantTinkerClient(tinker.SamplingClient):
        def sample(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return instant.sample(*args[:3])

    return object.__new__(InstantTinkerClient)


def _serve_app(app: Any) -> tuple[str, Any]:
    """Serve an aiohttp ``app`` on a free 127.0.0.1 port from its own thread; (base URL, stop)."""
    from aiohttp import web

    started: concurrent.futures.Future[str] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()

    async def open_site() -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set_result(f"http://127.0.0.1:{port}")
        return runner

    def serve() -> None:
        runner = loop.run_until_complete(open_site())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    return started.result(timeout=60), stop


async def measure_capture_proxy(
    pool: concurrent.futures.ProcessPoolExecutor, data_dir: str
) -> dict[str, Any]:
    """tinker-cookbook's capture proxy on the same instant sampler, model and renderer, its capture
    pipeline armed as its ``serve.py`` wires it (SDK instrumentation, exporter, store daemon):
    server CPU per call on chat completions and Messages at 1 and 16 clients.

    The store daemon, where the proxy's calls are recorded, is a separate process: its CPU per call
    is reported beside the proxy's as ``store_daemon_cpu_ms_per_call``. The lean endpoint records
    into a store in its own process, so its ``server_cpu_ms_per_call`` already holds recording:
    compare it with the sum of the two."""
    from pathlib import Path

    from tinker_cookbook.capture.exporter import CaptureExporter
    from tinker_cookbook.capture.instrument import instrument_tinker, uninstrument_tinker
    from tinker_cookbook.capture.proxy.app import ProxyDeps, make_app
    from tinker_cookbook.capture.store.client import StoreSink, ensure_daemon
    from tinker_cookbook.model_info import get_recommended_renderer_name
    from tinker_cookbook.renderers import get_renderer

    from agl_tinker.backend import get_tokenizer

    tokenizer = get_tokenizer(MODEL)
    exporter = CaptureExporter(StoreSink(ensure_daemon(Path(data_dir))))
    instrument_tinker(exporter)
    renderer = get_renderer(get_recommended_renderer_name(MODEL), tokenizer, model_name=MODEL)
    deps = ProxyDeps(renderer=renderer, sampling_client=_instant_tinker_client(tokenizer), model_label=MODEL)
    url, stop = _serve_app(make_app(deps))
    loop = asyncio.get_running_loop()
    result: dict[str, Any] = {}
    try:
        daemon = _daemon_pid(Path(data_dir))
        for route in ("chat", "messages"):
            figures = _route_figures()
            figures["store_daemon_cpu_ms_per_call"] = {}
            await loop.run_in_executor(pool, drive, url + "/v1", 1, 0.0, route)  # see _add_run
            for clients in (1, 16):
                cpu, daemon_cpu = time.process_time(), _cpu_seconds(daemon)
                run = await loop.run_in_executor(pool, drive, url + "/v1", clients, SECONDS, route)
                exporter.force_flush(timeout=30)
                _add_run(figures, clients, run, cpu)
                calls = len(run["latencies"]) + clients
                figures["store_daemon_cpu_ms_per_call"][str(clients)] = round(
                    (_cpu_seconds(daemon) - daemon_cpu) * 1000 / max(calls, 1), 3
                )
            result[route] = figures
    finally:
        stop()
        uninstrument_tinker()
        exporter.shutdown()
        _stop_store_daemon(Path(data_dir))
    return result


def _daemon_pid(data_dir: Any) -> int | None:
    """The pid of the capture store daemon serving ``data_dir`` (from its ``daemon.json``), if any."""
    import json

    from tinker_cookbook.capture.store.daemon import DAEMON_INFO_FILENAME

    try:
        return int(json.loads((data_dir / DAEMON_INFO_FILENAME).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _cpu_seconds(pid: int | None) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop_store_daemon(data_dir: Any) -> None:
    """End the capture store daemon this benchmark started."""
    import contextlib
    import signal

    pid = _daemon_pid(data_dir)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


async def main() -> None:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        lean = await measure("lean", pool)
        baseline = await measure("proxy", pool)
        with_model = await measure("lean", pool, instant=False)
        routes = await measure_routes(pool)
        with tempfile.TemporaryDirectory() as data_dir:
            capture = await measure_capture_proxy(pool, data_dir)
    with_model = {k: with_model[k] for k in ("overhead_ms_p50", "calls_per_s")}
    emit_json(
        {
            **lean,
            "baseline": baseline,
            "lean_with_simulated_model": with_model,
            "routes": routes,
            "capture_proxy": capture,
        }
    )


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    with json_stdout():
        asyncio.run(main())
