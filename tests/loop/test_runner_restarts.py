"""Runner restarts reach ``metrics.jsonl``: each step's row counts the restarts during that step.

The strategy's counts (``LeanServerStrategy.stats``, filled by its runner supervisor or Ray actor
pool) are cumulative and live; the loop reads them at the end of each step. Here the test plays
the strategy: it bumps the counts between steps, as a watch thread would while a step runs.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from agentlightning.store.memory import InMemoryLightningStore
from async_run import hello_config

from agl_tinker import backend
from agl_tinker.examples.hello.agent import hello_dataset, hello_rollout
from agl_tinker.loop.train import TrainResult, train
from agl_tinker.runners.inprocess import InProcessRunners
from agl_tinker.runners.supervise import DEATHS, RESTARTS

STEPS = 3


async def _run(config: Any, runner_stats: Counter[str] | None, bumps: Mapping[int, int]) -> TrainResult:
    """A short Hello run; after step ``s`` the strategy's restart count grows by ``bumps[s]``."""
    store = InMemoryLightningStore()
    service = backend.service_client(root_dir=Path(config.log_path) / "sim")

    def on_step(step: int, metrics: Mapping[str, Any]) -> None:
        if runner_stats is not None and step in bumps:
            runner_stats[RESTARTS] += bumps[step]
            runner_stats[DEATHS] += bumps[step]

    async with InProcessRunners(store, hello_rollout, concurrency=8):  # type: ignore[arg-type]
        return await train(
            config,
            store,
            hello_dataset("train"),
            service=service,
            show_progress=False,
            on_step=on_step,
            runner_stats=runner_stats,
        )


def _rows(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (log_path / "metrics.jsonl").read_text().splitlines() if x]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_step_row_counts_the_restarts_during_that_step(tmp_path: Path, mode: str) -> None:
    config = hello_config(tmp_path, mode, STEPS, eval_every=0)
    stats: Counter[str] = Counter()
    result = asyncio.run(_run(config, stats, {0: 2, 1: 1}))
    # step 0's bump lands during step 1 (it happens after step 0's row), step 1's during step 2
    assert [row[RESTARTS] for row in _rows(tmp_path)] == [0, 2, 1]
    assert [s[RESTARTS] for s in result.steps] == [0, 2, 1]


@pytest.mark.slow
def test_a_run_that_does_not_start_its_runners_reports_zero_restarts(tmp_path: Path) -> None:
    config = hello_config(tmp_path, "sync", 2, eval_every=0)
    asyncio.run(_run(config, None, {}))
    assert [row[RESTARTS] for row in _rows(tmp_path)] == [0, 0]
