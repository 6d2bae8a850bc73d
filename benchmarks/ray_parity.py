"""Ray runners against runner processes: same reward, comparable dispatch overhead (issue 36).

Run ``python benchmarks/ray_parity.py`` (needs ``agl-tinker[ray]``); prints one JSON line. Hello
1024 (the CI preset: 6 steps, evaluated at steps 0, 3 and 6) against the simulator, with three
runners, for each of ``AGL_BENCH_SEEDS`` (default ``0,1,2``):

* ``one_process``: ``fit`` with three forked runner processes (``LeanServerStrategy``);
* ``ray``: the same with ``RayRunnerStrategy`` over a local 3-node Ray cluster
  (``ray.cluster_utils.Cluster``: a head and two nodes, one CPU each, one runner per CPU);

and once (seed 0) ``split``: an ``agl-tinker store`` server process, a runner launcher process
with three runners, and the algorithm here, talking to the store over HTTP.

Per mode, per seed: ``final_reward``, the mean training reward of the last two steps (64
rollouts; ``final_eval``, the last evaluation's, is also given, over Hello's few validation
tasks), and over the seeds its mean and standard deviation; ``dispatch_overhead_ms_p50``: the median over the run's steps
of ``dispatch/overhead_ms_p50`` (a rollout's finish to the algorithm having read it). Then
``reward_diff`` (ray - one_process), ``noise`` (twice the standard error of that difference:
within it, the two modes reach the same reward), and ``ray_vs_split_overhead`` (target <= 2).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs

from agl_tinker.net import free_port

SEEDS = [int(s) for s in os.environ.get("AGL_BENCH_SEEDS", "0,1,2").split(",")]
MODES = os.environ.get("AGL_BENCH_MODES", "one_process,split,ray").split(",")
N_RUNNERS = 3


def _summary(result: Any, seconds: float) -> dict[str, Any]:
    overheads = [s["dispatch/overhead_ms_p50"] for s in result.steps if s.get("dispatch/overhead_ms_p50")]
    return {
        "final_eval": result.evals[-1].get("eval/reward/mean") if result.evals else None,
        "final_reward": round(statistics.mean(result.rewards[-2:]), 4) if result.rewards else None,
        "dispatch_overhead_ms_p50": round(statistics.median(overheads), 1) if overheads else None,
        "restarts": sum(s.get("runners/restarts", 0) for s in result.steps),
        "seconds": round(seconds, 1),
    }


def _one_run(mode: str, seed: int, root: Path) -> dict[str, Any]:
    from agl_tinker.examples.hello.train import hello_config, run_one_click

    config = hello_config(str(root / f"{mode}-{seed}"), ci=True, seed=seed)
    strategy = None
    if mode == "ray":
        from agl_tinker.runners.ray_cluster import RayRunnerSettings
        from agl_tinker.runners.ray_runners import RayRunnerStrategy

        strategy = RayRunnerStrategy(RayRunnerSettings(n_runners=N_RUNNERS, num_cpus=1))
    t0 = time.monotonic()
    result = run_one_click(config, n_runners=N_RUNNERS, strategy=strategy)
    return _summary(result, time.monotonic() - t0)


def _split_run(seed: int, root: Path) -> dict[str, Any]:
    """``agl-tinker store`` and ``agl-tinker hello runner`` as a user starts them; the algorithm
    here, talking to the store over HTTP."""
    import asyncio
    import signal
    import subprocess

    from agl_tinker.examples.hello.train import hello_config, run_algo
    from agl_tinker.runners.store_wait import wait_for_store

    cli = [sys.executable, "-m", "agl_tinker.cli"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    store = subprocess.Popen([*cli, "store", "--port", str(port)], **quiet)  # type: ignore[call-overload]
    runners = None
    try:
        if not asyncio.run(wait_for_store(url, timeout_s=180.0)):
            raise RuntimeError("the store server did not start")
        runners = subprocess.Popen(
            [*cli, "hello", "runner", "--store", url, "--n-runners", str(N_RUNNERS)], **quiet
        )  # type: ignore[call-overload]
        asyncio.run(_until_runners_poll(url, N_RUNNERS, runners))
        t0 = time.monotonic()
        result = run_algo(hello_config(str(root / f"split-{seed}"), ci=True, seed=seed), url)
        return _summary(result, time.monotonic() - t0)
    finally:
        for proc in (runners, store):
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _until_runners_poll(url: str, n: int, launcher: Any, timeout_s: float = 600.0) -> None:
    """Wait until ``n`` runners have asked the store for work (their imports take minutes on a
    loaded machine; the algorithm's stall deadline would count that wait as timeouts)."""
    import asyncio

    from agentlightning.store.client_server import LightningStoreClient

    store = LightningStoreClient(url)
    try:
        deadline = time.monotonic() + timeout_s
        while len(await store.query_workers()) < n:
            if launcher.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the runner launcher did not bring up {n} runners")
            await asyncio.sleep(1.0)  # ok: waiting for other processes to start
    finally:
        await store.close()


def _cluster() -> Any:
    """A head and two worker nodes, one CPU each; this process connected as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    return cluster


def _mode(runs: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [r["final_reward"] for r in runs if r["final_reward"] is not None]
    overheads = [r["dispatch_overhead_ms_p50"] for r in runs if r["dispatch_overhead_ms_p50"] is not None]
    return {
        "runs": runs,
        "final_reward_mean": round(statistics.mean(finals), 4) if finals else None,
        "final_reward_sd": round(statistics.stdev(finals), 4) if len(finals) > 1 else None,
        "dispatch_overhead_ms_p50": round(statistics.median(overheads), 1) if overheads else None,
    }


def main() -> None:
    logging.disable(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="ray-parity-"))
    out: dict[str, Any] = {"seeds": SEEDS, "runners": N_RUNNERS, "cpus": os.cpu_count()}
    if "one_process" in MODES:
        out["one_process"] = _mode([_one_run("one_process", s, root) for s in SEEDS])
        print({"one_process": out["one_process"]}, file=sys.stderr, flush=True)
    if "split" in MODES:
        out["split"] = _mode([_split_run(SEEDS[0], root)])
        print({"split": out["split"]}, file=sys.stderr, flush=True)
    if "ray" in MODES:
        import ray

        cluster = _cluster()
        try:
            out["ray"] = _mode([_one_run("ray", s, root) for s in SEEDS])
        finally:
            ray.shutdown()
            cluster.shutdown()
    out["loadavg_1m"] = round(os.getloadavg()[0], 1)
    if all(m in out for m in ("one_process", "split", "ray")):
        _compare(out)
    emit_json(out)


def _compare(out: dict[str, Any]) -> None:
    """The targets: Ray's final reward within noise of one process's, its overhead within 2x of split's."""
    one, on_ray = out["one_process"], out["ray"]
    if one["final_reward_mean"] is not None and on_ray["final_reward_mean"] is not None:
        out["reward_diff"] = round(on_ray["final_reward_mean"] - one["final_reward_mean"], 4)
        sds = [one["final_reward_sd"] or 0.0, on_ray["final_reward_sd"] or 0.0]
        out["noise"] = round(2 * (sum(sd**2 for sd in sds) / len(SEEDS)) ** 0.5, 4)
        out["within_noise"] = abs(out["reward_diff"]) <= out["noise"]
    split_ms, ray_ms = out["split"]["dispatch_overhead_ms_p50"], on_ray["dispatch_overhead_ms_p50"]
    out["ray_vs_split_overhead"] = round(ray_ms / split_ms, 2) if split_ms and ray_ms else None


if __name__ == "__main__":
    with json_stdout():
        main()
