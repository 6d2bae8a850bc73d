"""Two runs on one machine never share a store, and runners only take their own run's rollouts.

With Agent-lightning's fixed store port (4747) a second run started while one was going failed
to bind, yet its runners connected to the first run's store and ran its rollouts with the wrong
agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agentlightning.store.client_server import API_V1_AGL_PREFIX
from agentlightning.store.memory import InMemoryLightningStore
from aiohttp import web

from agl_tinker.algorithm import LeanServerStrategy
from agl_tinker.net import free_port
from agl_tinker.runners.store_wait import StoreOfAnotherRun, wait_for_store
from agl_tinker.store_routes import RUN_PATH
from agl_tinker.store_server import LeanStoreServer

HERE = Path(__file__).parent


def test_the_strategy_takes_a_free_port_and_a_run_id_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGL_SERVER_PORT", raising=False)
    a, b = LeanServerStrategy(n_runners=1), LeanServerStrategy(n_runners=1)
    assert 4747 not in (a.server_port, b.server_port)
    assert a.run_id != b.run_id
    assert LeanServerStrategy(n_runners=1, server_port=5123).server_port == 5123


async def test_a_runner_refuses_the_store_of_another_run() -> None:
    server = LeanStoreServer(
        InMemoryLightningStore(), host="127.0.0.1", port=free_port("127.0.0.1"), run_id="a"
    )
    await server.start()
    try:
        assert await wait_for_store(server.endpoint, timeout_s=30, run_id="a")
        with pytest.raises(StoreOfAnotherRun, match="belongs to another run"):
            await wait_for_store(server.endpoint, timeout_s=30, run_id="b")
    finally:
        await server.stop()


@pytest.mark.slow
def test_two_runs_started_at_once_both_finish_with_their_own_agents(tmp_path: Path) -> None:
    """The README's pattern in two processes; each agent scores a constant, so a rollout run by the
    other run's agent would show in the rewards."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("AGL_SERVER_PORT", None)
    procs = {reward: _start_run(reward, tmp_path / f"run{reward}", env) for reward in (1.0, -1.0)}
    results: dict[float, dict[str, Any]] = {}
    for reward, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-4000:]
        results[reward] = json.loads(out.strip().splitlines()[-1])
    for reward, result in results.items():
        assert len(result["steps"]) == 3
        assert result["rewards"] == [reward] * 3, result["rewards"]
        assert all(step["rollouts/succeeded_frac"] == 1.0 for step in result["steps"])


def _start_run(reward: float, log_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, str(HERE / "scenarios.py"), "own_run", "--log-path", str(log_path)]
    return subprocess.Popen(
        [*command, "--reward", str(reward)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("<html>a dashboard</html>", "text/html"), ("[1, 2]", "application/json"), ("{", "application/json")],
)
async def test_a_runner_reaching_a_server_that_is_no_agl_tinker_store_says_so_at_once(
    body: str, content_type: str
) -> None:
    """Health answers 200 but the run route is no JSON object: a one-line error, not 120 s of retries."""
    app = web.Application()
    app.router.add_get(API_V1_AGL_PREFIX + "/health", lambda _: web.json_response({"status": "ok"}))
    app.router.add_get(
        API_V1_AGL_PREFIX + RUN_PATH, lambda _: web.Response(text=body, content_type=content_type)
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        with pytest.raises(StoreOfAnotherRun, match="answers but is not an agl-tinker store server"):
            await asyncio.wait_for(wait_for_store(f"http://{host}:{port}", timeout_s=30, run_id="a"), 10)
    finally:
        await runner.cleanup()
