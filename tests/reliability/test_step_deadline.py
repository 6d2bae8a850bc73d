"""A step always ends: hung agents and absent runners cost at most the stall deadline, counted as timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from agentlightning.types import Rollout, RolloutConfig, Span
from reliability_harness import half_hang, hello_config, memory_store, run_hello
from tinker_cookbook.rl.train import AsyncConfig

from agl_tinker.dispatch.batch import dispatch_batch
from agl_tinker.dispatch.types import DEADLINE_METADATA_KEY, DispatchConfig
from agl_tinker.loop.batch_metrics import rollout_status
from agl_tinker.loop.errors import StepStalled
from agl_tinker.loop.training_run import STALL_GRACE_S


def _status(rollout: Rollout, spans: Sequence[Span]) -> str:
    return rollout_status(rollout)


async def test_without_runners_the_stall_deadline_ends_the_batch_as_timeouts() -> None:
    store = memory_store()
    config = DispatchConfig(
        rollout_config=RolloutConfig(timeout_seconds=0.2), stall_timeout_s=0.5, max_in_flight=2
    )
    started = time.perf_counter()
    batch = await asyncio.wait_for(dispatch_batch(store, [{"x": 1}, {"x": 2}], 2, _status, config=config), 30)
    assert time.perf_counter() - started < 15
    # the two in flight were cut (never started: the process callable still sees a timeout) ...
    assert [o.final_status for o in batch.outcomes] == ["timeout", "timeout"]
    assert [o.result for o in batch.outcomes] == ["timeout", "timeout"]
    assert all(o.cut_by_deadline for o in batch.outcomes)
    assert batch.stats.n_skipped == 2  # ... and the two never enqueued are skipped
    stored = await store.query_rollouts()
    assert all(r.status == "cancelled" for r in stored)  # the store's record: cancelled, not lied about
    assert all(DEADLINE_METADATA_KEY not in (r.metadata or {}) for r in stored)


async def test_a_rollout_that_finishes_before_the_stall_deadline_keeps_its_status() -> None:
    store = memory_store()

    async def runner() -> None:
        while (attempted := await store.dequeue_rollout()) is None:
            await asyncio.sleep(0.01)
        await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded")

    task = asyncio.create_task(runner())
    config = DispatchConfig(stall_timeout_s=1.0)
    batch = await asyncio.wait_for(dispatch_batch(store, [{"x": 1}], 2, _status, config=config), 30)
    await task
    assert sorted(o.final_status for o in batch.outcomes) == ["succeeded", "timeout"]


@pytest.mark.slow
async def test_a_step_with_agents_that_hang_forever_ends_and_counts_the_timeouts(tmp_path: Path) -> None:
    """rollout_timeout_s=1, no batch_timeout_s, half the agents sleep forever (runners stay stuck in
    them): every step still ends, within the derived deadline, and its metrics count the timeouts."""
    config = hello_config(tmp_path / "run", max_steps=2, rollout_timeout_s=1.0, max_empty_steps=0)
    started = time.perf_counter()
    result = await asyncio.wait_for(run_hello(config, half_hang, sim_dir=tmp_path / "sim"), 120)
    elapsed = time.perf_counter() - started
    assert [s["step"] for s in result.steps] == [0, 1]
    stall = 1.0 * config.max_attempts + STALL_GRACE_S
    assert elapsed < 2 * (stall + 10), elapsed
    for step in result.steps:
        assert step["rollouts/timeout"] >= 1, step
        assert step["excluded/timeout"] == step["rollouts/timeout"], step
        assert step["rollouts/total"] + step["rollouts/skipped"] == 16, step
        assert step["rollouts/succeeded_frac"] < 1.0


async def _hang(task: dict[str, object], llm: object) -> float:
    await asyncio.Event().wait()
    return 0.0


@pytest.mark.slow
async def test_async_training_with_every_agent_hung_stops_instead_of_hanging(tmp_path: Path) -> None:
    """Async mode learns finished groups from a continuous dispatcher: with every agent stuck it
    used to wait for the next group forever."""
    config = hello_config(
        tmp_path / "run",
        max_steps=2,
        rollout_timeout_s=0.5,
        group_size=2,
        async_config=AsyncConfig(max_steps_off_policy=1, groups_per_batch=4),
    )
    with pytest.raises(StepStalled, match="no group finished"):
        await asyncio.wait_for(run_hello(config, _hang, sim_dir=tmp_path / "sim"), 120)
