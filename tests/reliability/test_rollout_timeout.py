"""A rollout past its ``timeout_seconds`` is cancelled where it runs and counted as ``timeout``.

Agent-lightning's runner awaited a hung agent forever: the store marked the attempt timed out,
but the runner never took the next rollout, and a step waiting on those rollouts never ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import RolloutConfig
from quiet_tracer import QuietTracer

from agl_tinker.runners.deadline import DeadlineRunner

HERE = Path(__file__).parent


async def maybe_hang(task: dict[str, Any], llm: agl.LLM) -> float:
    if task["hang"]:
        await asyncio.Event().wait()  # never set: the agent hangs
    return 1.0


async def test_a_hung_rollout_is_cancelled_at_its_timeout_and_the_runner_moves_on() -> None:
    store = InMemoryLightningStore(scan_debounce_seconds=0)
    await store.add_resources({"llm": agl.LLM(endpoint="http://127.0.0.1:9/v1", model="m")})
    config = RolloutConfig(timeout_seconds=0.5)
    hung = await store.enqueue_rollout({"hang": True}, config=config)
    fine = await store.enqueue_rollout({"hang": False}, config=config)
    runner = DeadlineRunner(QuietTracer(), max_rollouts=2, poll_interval=0.01)
    runner.init(agl.rollout(maybe_hang))
    runner.init_worker(0, store)

    await asyncio.wait_for(runner.iter(), timeout=20)

    (hung_after,) = await store.query_rollouts(rollout_id_in=[hung.rollout_id])
    (fine_after,) = await store.query_rollouts(rollout_id_in=[fine.rollout_id])
    hung_attempts = await store.query_attempts(hung.rollout_id)
    assert fine_after.status == "succeeded"
    assert hung_after.status == "failed" and [a.status for a in hung_attempts] == ["timeout"]
    assert runner.timed_out == 1


async def test_a_rollout_within_its_timeout_is_left_alone() -> None:
    store = InMemoryLightningStore(scan_debounce_seconds=0)
    await store.add_resources({"llm": agl.LLM(endpoint="http://127.0.0.1:9/v1", model="m")})
    rollout = await store.enqueue_rollout({"hang": False}, config=RolloutConfig(timeout_seconds=30))
    runner = DeadlineRunner(QuietTracer(), max_rollouts=1, poll_interval=0.01)
    runner.init(agl.rollout(maybe_hang))
    runner.init_worker(0, store)
    await asyncio.wait_for(runner.iter(), timeout=20)
    (after,) = await store.query_rollouts(rollout_id_in=[rollout.rollout_id])
    assert after.status == "succeeded" and runner.timed_out == 0


@pytest.mark.slow
def test_a_run_with_half_its_agents_hanging_finishes_and_trains_the_rest(tmp_path: Path) -> None:
    """Through ``agl_tinker.algorithm.fit`` with no batch timeout: only the rollout timeout ends the hung ones."""
    out = _run_scenario("hang", tmp_path, timeout_s=240)
    (step,) = out["steps"]
    assert step["excluded/timeout"] == 4, step
    assert step["train/datums"] > 0 and step["groups/trained"] == 2, step


def _run_scenario(name: str, tmp_path: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``scenarios.py NAME`` in its own process (a hang fails the test instead of hanging it)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "scenarios.py"), name, "--log-path", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


class _SlowToConfirmStore(InMemoryLightningStore):
    """Writes a ``succeeded`` attempt at once, then takes a second to answer (a slow store server)."""

    async def update_attempt(self, rollout_id: str, attempt_id: str, **kwargs: Any) -> Any:
        result = await super().update_attempt(rollout_id, attempt_id, **kwargs)
        if kwargs.get("status") == "succeeded":
            await asyncio.sleep(1.0)
        return result


async def test_a_deadline_that_passes_during_the_closing_write_leaves_the_finished_attempt_alone() -> None:
    store = _SlowToConfirmStore(scan_debounce_seconds=0)
    await store.add_resources({"llm": agl.LLM(endpoint="http://127.0.0.1:9/v1", model="m")})
    rollout = await store.enqueue_rollout({"hang": False}, config=RolloutConfig(timeout_seconds=0.5))
    finished: list[tuple[str, str]] = []
    runner = DeadlineRunner(
        QuietTracer(),
        max_rollouts=1,
        poll_interval=0.01,
        on_finished=lambda _worker, rid, status: finished.append((rid, status)),
    )
    runner.init(agl.rollout(maybe_hang))
    runner.init_worker(0, store)
    await asyncio.wait_for(runner.iter(), timeout=20)
    attempts = await store.query_attempts(rollout.rollout_id)
    assert [a.status for a in attempts] == ["succeeded"]  # finished before its deadline: never rewritten
    assert runner.timed_out == 0 and finished == [(rollout.rollout_id, "succeeded")]
