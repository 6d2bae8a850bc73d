"""Runners as Ray actors on a real multi-node Ray cluster on this machine (``ray.cluster_utils``).

One cluster serves the module and one Hello run does the work (actor processes start in seconds
to a minute on a busy machine: each imports Agent-lightning): three runners, one on each of three
nodes (one CPU each, one CPU per runner), and a spare node; after step 0 the node of a runner is
removed while step 1's rollouts run. Skipped, with the reason, where Ray is not installed or a
cluster cannot start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'agl-tinker[ray]'")

from agl_tinker.examples.hello.train import hello_config, run_one_click  # noqa: E402
from agl_tinker.runners.ray_cluster import RayRunnerSettings, probe  # noqa: E402
from agl_tinker.runners.ray_runners import RayRunnerStrategy  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = {
    "max_steps": 3,
    "batch_size": 4,
    "group_size": 2,
    "eval_every": 0,
    "save_every": 0,
    "max_attempts": 2,
}
ROLLOUTS_PER_STEP = SMALL["batch_size"] * SMALL["group_size"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Head plus three worker nodes, one CPU each, no dashboard; this process connected as driver."""
    from ray.cluster_utils import Cluster

    try:
        built = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(3):
            built.add_node(num_cpus=1)
        built.wait_for_nodes()
        ray.init(address=built.address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as e:  # no Ray cluster on this machine: say why, run the rest
        pytest.skip(f"a local Ray cluster cannot start here: {type(e).__name__}: {e}")
    try:
        yield built
    finally:
        ray.shutdown()
        built.shutdown()


def _metrics(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines() if line]


def _nodes_started(events: list[Mapping[str, Any]]) -> dict[int, str]:
    """worker id -> node id prefix of its latest start."""
    return {e["worker"]: e["node"] for e in events if e["event"] == "started"}


def test_the_probe_accepts_a_real_cluster(cluster: Any) -> None:
    probe(cluster.address, timeout_s=5.0)


def test_runners_spread_over_the_nodes_survive_the_loss_of_one_mid_step(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three runners land on three nodes. Once step 0 is done, a runner's node is removed while
    step 1's rollouts run (each sample takes 1 s). Its actor is replaced on the spare node, the
    rollout it held is retried, every step completes and trains each of its rollouts exactly once.

    A sample takes 1 s so that steps 1 and 2 (3 rounds of rollouts each) outlast Ray's report of the
    death (about 2 s after the removal here): with 0.3 s samples a fast run could finish before it,
    leaving the restart in no step's row (seen in CI on a quiet machine)."""
    monkeypatch.setenv("AGL_TINKER_SIM_SAMPLE_TTFT_S", "1.0")
    strategy = RayRunnerStrategy(RayRunnerSettings(n_runners=3, num_cpus=1, max_restarts=2))
    removed: list[dict[str, Any]] = []
    t0 = strategy.created_at  # the zero of strategy.events' times
    spread: list[int] = []

    def remove_a_runner_node() -> None:
        time.sleep(0.5)  # into step 1: its rollouts are running
        on_nodes = set(_nodes_started(strategy.events).values())
        spread.append(len(on_nodes))
        victim = next(n for n in cluster.worker_nodes if n.node_id[:8] in on_nodes)
        removed.append({"event": "node_removing", "node": victim.node_id[:8], "t": _since(t0)})
        cluster.remove_node(victim, allow_graceful=False)
        removed.append({"event": "node_removed", "node": victim.node_id[:8], "t": _since(t0)})

    def on_step(step: int, metrics: Mapping[str, Any]) -> None:
        removed.append({"event": f"step {step} done", "t": _since(t0)})
        if step == 0:
            threading.Thread(target=remove_a_runner_node, daemon=True).start()

    result = run_one_click(hello_config(str(tmp_path), **SMALL), on_step=on_step, strategy=strategy)
    timeline = sorted([*removed, *strategy.events], key=lambda e: e["t"])
    print(json.dumps(timeline))  # the timeline (run with -s to see it)
    assert spread == [3]  # one runner per node before the loss
    assert len(result.steps) == SMALL["max_steps"]
    assert strategy.stats["runners/deaths"] == 1
    assert strategy.stats["runners/restarts"] == 1
    victim = next(e["node"] for e in removed if e["event"] == "node_removed")
    died = next(e for e in strategy.events if e["event"] == "died")
    assert victim not in {
        e["node"] for e in strategy.events if e["event"] == "started" and e["t"] > died["t"]
    }
    rows = _metrics(tmp_path)
    assert rows[0]["runners/restarts"] == 0  # the restart is in the metrics (step 1's or 2's row)
    assert sum(row["runners/restarts"] for row in rows) == 1
    for row in rows:
        assert row["rollouts/total"] == ROLLOUTS_PER_STEP  # none trained twice, none dropped
        assert row["rollouts/succeeded_frac"] == 1.0  # the held rollout was retried, not lost


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)
