"""Memory growth per training step of Hello: the algorithm process, and the store in split mode.

Run ``python benchmarks/memory.py [--steps 100] [--warmup 20] [--mode sync|stream|async]
[--policies 1|2] [--layout both|one-click|split]``; prints one JSON line:

* ``algorithm_mb_per_step``: one-click Hello (``agl_tinker.algorithm.fit``: the store server, the
  algorithm and the endpoint in this process, 2 runner processes), RSS slope of this process.
* ``store_mb_per_step``: split mode (``agl-tinker store`` in its own process, the algorithm in a
  process of its own against it over HTTP, ``agl-tinker hello runner`` processes), RSS slope of the
  store process; ``split_algorithm_mb_per_step`` is that algorithm process's.
* ``steps``: training steps per run; slopes are least-squares fits of RSS (MB) against the step
  over the steps after ``warmup``. ``rss_mb``: first and last RSS of each measured process.

Hello as ``agl-tinker hello`` trains it (8 tasks x group 4), without evaluation or intermediate
checkpoints (they only add a constant), on the in-process Tinker simulator. ``--mode`` picks the
schedule: ``sync`` (the default loop), ``stream`` (``stream_minibatch_config``, 4 minibatches) or
``async`` (``async_config``, ``max_steps_off_policy=1``). ``--policies 2`` trains the Duet instead
(two agents, two LoRAs, the same batch shape); it has no split-mode runner command, so it runs
one-click only; a combination the training loop refuses is refused before anything runs.
The simulator's candidate cache is set to ``SIM_CANDIDATE_CACHE`` prompts (``sim_candidate_cache``
in the JSON), so that it is full before the warm-up ends. RSS is read from
``/proc/<pid>/status`` (``VmRSS``) right after each step. A flat process shows a slope of a few
hundredths of a MB per step either way (allocator noise); one that keeps what it no longer needs
grows by its per-step data.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
SIM_CANDIDATE_CACHE = 64
# The simulator's candidate cache (read at its import; runner and algorithm children inherit it) is
# bounded, but at its default 256 prompts (~60 KB each) Hello's 8 new prompts per step fill it over
# the first 32 steps, past the warm-up: the slope then measured the simulator warming up (0.4 MB/step
# until full, in every mode), not what the algorithm keeps. 64 prompts still hold two steps in flight.
os.environ.setdefault("AGL_TINKER_SIM_CANDIDATE_CACHE", str(SIM_CANDIDATE_CACHE))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentlightning.store.client_server import LightningStoreClient  # noqa: E402
from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig  # noqa: E402

from agl_tinker.algorithm import fit  # noqa: E402
from agl_tinker.examples.duet.agent import duet_agent, duet_dataset  # noqa: E402
from agl_tinker.examples.duet.train import duet_config  # noqa: E402
from agl_tinker.examples.hello.agent import hello_agent, hello_dataset  # noqa: E402
from agl_tinker.examples.hello.train import hello_config  # noqa: E402
from agl_tinker.loop.config import ConfigError, TrainConfig  # noqa: E402
from agl_tinker.loop.train import train  # noqa: E402
from agl_tinker.runners.store_wait import wait_for_store  # noqa: E402

_START_TIMEOUT_S = 600.0  # a loaded machine imports slowly


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of ``pid`` (this process by default), in MB."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line")


def slope(values: list[float], warmup: int) -> float | None:
    """Least-squares slope of ``values`` against their index, from index ``warmup`` on."""
    ys = values[warmup:]
    n = len(ys)
    if n < 2:
        return None
    mean_x, mean_y = (n - 1) / 2, sum(ys) / n
    cov = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(ys))
    var = sum((i - mean_x) ** 2 for i in range(n))
    return cov / var


MODES = ("sync", "stream", "async")
BATCH = 8


def _config(log_path: str, steps: int, mode: str = "sync", policies: int = 1) -> TrainConfig:
    extra: dict[str, Any] = {"max_steps": steps, "eval_every": 0, "save_every": 0}
    if mode == "async":
        extra["async_config"] = AsyncConfig(max_steps_off_policy=1, groups_per_batch=BATCH)
    elif mode == "stream":
        extra["stream_minibatch_config"] = StreamMinibatchConfig(groups_per_batch=BATCH, num_minibatches=4)
    if policies == 2:
        return duet_config(log_path, batch_size=BATCH, **extra)
    return hello_config(log_path, **extra)


def one_click(steps: int, mode: str = "sync", policies: int = 1) -> list[float]:
    """RSS of this process after each step of one-click Hello (the Duet with two policies)."""
    samples: list[float] = []
    agent, dataset = (duet_agent, duet_dataset) if policies == 2 else (hello_agent, hello_dataset)
    with tempfile.TemporaryDirectory() as tmp:
        fit(
            agent,
            _config(tmp, steps, mode, policies),
            dataset("train"),
            n_runners=2,
            required_fields=("identity",),
            on_step=lambda step, metrics: samples.append(rss_mb()),
        )
    return samples


def _split_algorithm(url: str, steps: int, store_pid: int, out: Any, mode: str = "sync") -> None:
    """Child process: the algorithm over HTTP; sends (its RSS, the store's RSS) after each step."""
    logging.basicConfig(level=logging.CRITICAL)

    async def run() -> None:
        store = LightningStoreClient(url)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                await train(
                    _config(tmp, steps, mode),
                    store,
                    hello_dataset("train"),
                    required_fields=("identity",),
                    show_progress=False,
                    on_step=lambda step, metrics: out.send((rss_mb(), rss_mb(store_pid))),
                )
        finally:
            await store.close()

    asyncio.run(run())
    out.send(None)


def split(steps: int, mode: str = "sync") -> tuple[list[float], list[float]]:
    """(algorithm RSS, store RSS) after each step of split-mode Hello."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "agl_tinker.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    store = subprocess.Popen([*cli, "store", "--port", str(port)], **quiet)
    runners = subprocess.Popen([*cli, "hello", "runner", "--store", url, "--n-runners", "2"], **quiet)
    algo_rss: list[float] = []
    store_rss: list[float] = []
    try:
        if not asyncio.run(wait_for_store(url, timeout_s=_START_TIMEOUT_S)) or store.poll() is not None:
            raise RuntimeError(f"the store server did not start within {_START_TIMEOUT_S:.0f}s")
        receive, send = mp.get_context("spawn").Pipe(duplex=False)
        child = mp.get_context("spawn").Process(
            target=_split_algorithm, args=(url, steps, store.pid, send, mode)
        )
        child.start()
        while (sample := receive.recv()) is not None:
            algo_rss.append(sample[0])
            store_rss.append(sample[1])
        child.join()
    finally:
        for proc in (runners, store):
            proc.terminate()
        for proc in (runners, store):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return algo_rss, store_rss


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--mode", choices=MODES, default="sync", help="the training schedule")
    parser.add_argument("--policies", type=int, choices=[1, 2], default=1)
    parser.add_argument("--layout", choices=["both", "one-click", "split"], default="both")
    args = parser.parse_args()
    if args.policies == 2 and args.layout == "split":
        parser.error("--policies 2 runs one-click only (the Duet has no split-mode runner command)")
    try:  # what the loop refuses (e.g. a schedule several policies cannot run yet) is refused here
        _config(tempfile.gettempdir(), args.steps, args.mode, args.policies)  # validated when built
    except ConfigError as e:
        parser.error(f"--mode {args.mode} --policies {args.policies}: {e}")
    logging.basicConfig(level=logging.CRITICAL)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "steps": args.steps,
        "warmup": args.warmup,
        "mode": args.mode,
        "policies": args.policies,
        "sim_candidate_cache": int(os.environ["AGL_TINKER_SIM_CANDIDATE_CACHE"]),
    }
    rss: dict[str, list[float]] = {}
    if args.layout in ("both", "one-click"):
        rss["algorithm"] = one_click(args.steps, args.mode, args.policies)
        result["algorithm_mb_per_step"] = _rounded(slope(rss["algorithm"], args.warmup))
    if args.layout in ("both", "split") and args.policies == 1:
        rss["split_algorithm"], rss["store"] = split(args.steps, args.mode)
        result["store_mb_per_step"] = _rounded(slope(rss["store"], args.warmup))
        result["split_algorithm_mb_per_step"] = _rounded(slope(rss["split_algorithm"], args.warmup))
    result["rss_mb"] = {k: [round(v[0], 1), round(v[-1], 1)] for k, v in rss.items() if v}
    result["seconds"] = round(time.perf_counter() - started, 1)
    emit_json(result)


if __name__ == "__main__":
    with json_stdout():
        main()
