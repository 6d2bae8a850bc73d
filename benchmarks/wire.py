"""The wire simulator's speed through the real tinker SDK; prints one JSON line.

- ``sample_calls_per_s``: completed ``SamplingClient.sample`` calls per second with 16 concurrent
  callers (one short answer each), the SDK talking to an ``agl-tinker sim-server`` process.
- ``hello_ci_wall_s``: wall time of ``agl-tinker hello --ci`` (a fresh process each) on the
  in-process simulator (``inproc``) and through the SDK and the wire simulator (``wire``), measured
  in the same run; ``hello_ci_train_s`` is the training part each run reports.

- ``--soak``: instead, one ``sim-server`` (sessions expire after 5 s idle) serves 200 sessions, each
  opened by a fresh ``tinker.ServiceClient``, trained (rank-32 LoRA: forward_backward, optim_step,
  a sampling client from the new weights, one sample) and closed, then 50 more opened and trained
  by a child process that exits without closing them (their heartbeats stop and they expire).
  ``soak_rss_mb``: the server's resident memory after the first 10 sessions, after the 200, and
  after the 50 abandoned have expired; ``soak_growth_mb`` = last - first (target: under 50).

Usage: ``python benchmarks/wire.py [--seconds 10] [--callers 16] [--skip-hello] [--soak]``.
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
def sim_server(checkpoints: str, **env: str) -> Iterator[tuple[str, int]]:
    """An ``agl-tinker sim-server`` subprocess on a free port; yields its URL and pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agl_tinker.cli", "sim-server"],
        env=_env(AGL_TINKER_SIM_DIR=checkpoints, **env),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://\S+", line)
        if match is None:
            raise RuntimeError(f"sim-server did not start: {line!r}")
        yield match.group(0), proc.pid
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


SOAK_SESSIONS, SOAK_ABANDONED, SOAK_EXPIRY_S = 200, 50, 5.0
SOAK_CHILD = """
import os, sys
sys.path.insert(0, {bench!r})
from wire import _soak_session
for _ in range({n}):
    _soak_session({url!r}, close=False)
os._exit(0)  # no close, no atexit: the sessions stop heartbeating as a crashed client's do
"""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _soak_session(url: str, close: bool = True) -> None:
    """One session as a client that trains briefly: open, train a step, sample, close (or not)."""
    import numpy as np
    import tinker
    from tinker import types

    from fakes.tokenizer import load_tokenizer

    tokens = load_tokenizer(MODEL).encode(
        "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>"
    )
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": np.array(tokens[1:])},
    )
    service = tinker.ServiceClient(base_url=url, api_key="tml-local")
    training = service.create_lora_training_client(MODEL, rank=32).result()
    training.forward_backward([datum], "cross_entropy").result()
    training.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    sampler = training.save_weights_and_get_sampling_client()
    sampler.sample(types.ModelInput.from_ints(tokens[:-3]), 1, types.SamplingParams(max_tokens=4)).result()
    if close:
        service.close("success").result()


def _soak(sessions: int = SOAK_SESSIONS, abandoned: int = SOAK_ABANDONED) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        sim_server(f"{tmp}/ckpt", AGL_TINKER_WIRE_SESSION_EXPIRY_S=str(SOAK_EXPIRY_S)) as (url, pid),
    ):
        start = time.perf_counter()
        for _ in range(10):
            _soak_session(url)
        first = _rss_mb(pid)
        for _ in range(sessions - 10):
            _soak_session(url)
        closed = _rss_mb(pid)
        code = SOAK_CHILD.format(bench=str(Path(__file__).parent), n=abandoned, url=url)
        subprocess.run([sys.executable, "-c", code], env=_env(), check=True, stdout=sys.stderr)
        time.sleep(SOAK_EXPIRY_S * 1.5 + 1)  # expiry plus the server's check period
        expired = _rss_mb(pid)
        wall = time.perf_counter() - start
    return {
        "soak_sessions": {"closed": sessions, "abandoned": abandoned, "rank": 32},
        "soak_rss_mb": {
            "after_10": round(first, 1),
            "after_closed": round(closed, 1),
            "after_expired": round(expired, 1),
        },
        "soak_growth_mb": round(expired - first, 1),
        "soak_wall_s": round(wall, 1),
    }


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
    parser.add_argument("--soak", action="store_true", help="the session soak instead (see the docstring)")
    parser.add_argument("--soak-sessions", type=int, default=SOAK_SESSIONS)
    parser.add_argument("--soak-abandoned", type=int, default=SOAK_ABANDONED)
    args = parser.parse_args()
    result: dict[str, object] = {"callers": args.callers}
    if args.soak:
        emit_json(_soak(args.soak_sessions, args.soak_abandoned))
        return
    with tempfile.TemporaryDirectory() as tmp, sim_server(f"{tmp}/ckpt") as (url, _pid):
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
