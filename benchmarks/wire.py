"""The wire simulator's speed through the real tinker SDK; prints one JSON line.

- ``sample_calls_per_s``: completed ``SamplingClient.sample`` calls per second with 16 concurrent
  callers (one short answer each), the SDK talking to an ``agl-tinker sim-server`` process.
- ``hello_ci_wall_s``: wall time of ``agl-tinker hello --ci`` (a fresh process each) on the
  in-process simulator (``inproc``) and through the SDK and the wire simulator (``wire``), measured
  in the same run; ``hello_ci_train_s`` is the training part each run reports.

Usage: ``python benchmarks/wire.py [--seconds 10] [--callers 16] [--skip-hello]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **extra}


@contextmanager
def sim_server(checkpoints: str) -> Iterator[str]:
    """An ``agl-tinker sim-server`` subprocess on a free port; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agl_tinker.cli", "sim-server"],
        env=_env(AGL_TINKER_SIM_DIR=checkpoints),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://\S+", line)
        if match is None:
            raise RuntimeError(f"sim-server did not start: {line!r}")
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(30)


def _sample_rate(url: str, seconds: float, callers: int) -> float:
    import tinker
    from tinker import types

    from fakes.tokenizer import load_qwen3_tokenizer

    service = tinker.ServiceClient(base_url=url, api_key="tml-local")
    sampler = service.create_sampling_client(base_model=MODEL).result()
    text = "<|im_start|>user\nHello! Who are you?<|im_end|>\n<|im_start|>assistant\n"
    prompt = types.ModelInput.from_ints(load_qwen3_tokenizer(MODEL).encode(text))
    params = types.SamplingParams(max_tokens=16)
    sampler.sample(prompt, 1, params).result()  # warm-up: connections, caches

    async def run() -> float:
        done = 0
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await sampler.sample(prompt, 1, params)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return done / (time.perf_counter() - start)

    rate = asyncio.run(run())
    service.close("success").result()
    return rate


def _hello(env: dict[str, str], log_path: str) -> tuple[float, float]:
    """(process wall seconds, training seconds the summary reports) of ``agl-tinker hello --ci``."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "agl_tinker.cli", "hello", "--ci", "--log-path", log_path],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"hello --ci failed:\n{run.stderr[-3000:]}")
    match = re.search(r"wall time:\s+([0-9.]+)s", run.stdout)
    return wall, float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--skip-hello", action="store_true")
    args = parser.parse_args()
    result: dict[str, object] = {"callers": args.callers}
    with tempfile.TemporaryDirectory() as tmp, sim_server(f"{tmp}/ckpt") as url:
        result["sample_calls_per_s"] = round(_sample_rate(url, args.seconds, args.callers), 1)
        if not args.skip_hello:
            wire_env = _env(AGL_TINKER_BACKEND="live", TINKER_BASE_URL=url, TINKER_API_KEY="tml-local")
            inproc_env = _env(AGL_TINKER_BACKEND="sim", AGL_TINKER_SIM_DIR=f"{tmp}/inproc")
            inproc = _hello(inproc_env, f"{tmp}/hello-inproc")
            wire = _hello(wire_env, f"{tmp}/hello-wire")
            result["hello_ci_wall_s"] = {"inproc": round(inproc[0], 1), "wire": round(wire[0], 1)}
            result["hello_ci_train_s"] = {"inproc": inproc[1], "wire": wire[1]}
            result["wire_over_inproc"] = round(wire[0] / inproc[0], 2)
    emit_json(result)


if __name__ == "__main__":
    with json_stdout():
        main()
