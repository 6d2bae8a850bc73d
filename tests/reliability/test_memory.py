"""Finished rollouts and their spans are released from the store once the loop has taken them.

Agent-lightning's stores keep every rollout, attempt and span for their whole life: the one-click
algorithm process (which holds the store) and split mode's store process grew by a batch of
them every step. Every schedule (sync batches, streamed minibatches, overlapped async) releases;
per-step memory over a long run is measured by ``benchmarks/memory.py --mode sync|stream|async``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import Span
from quiet_tracer import QuietTracer
from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

from agl_tinker.examples.hello.agent import hello_agent, hello_dataset
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.train import train
from agl_tinker.net import free_port
from agl_tinker.runners.deadline import DeadlineRunner
from agl_tinker.store_server import LeanStoreServer, completion_events, release_rollouts


async def _finished_and_running(store: Any) -> tuple[str, str]:
    """One rollout run to success with two spans, one left running; their ids."""
    done = await store.start_rollout({"x": 1})
    for _ in range(2):
        core = agl.emit_reward(1.0, propagate=False)
        seq = await store.get_next_span_sequence_id(done.rollout_id, done.attempt.attempt_id)
        await store.add_span(
            Span.from_core_fields(
                core, rollout_id=done.rollout_id, attempt_id=done.attempt.attempt_id, sequence_id=seq
            )
        )
    await store.update_attempt(done.rollout_id, done.attempt.attempt_id, status="succeeded")
    running = await store.start_rollout({"x": 2})
    return done.rollout_id, running.rollout_id


async def test_releasing_forgets_a_finished_rollout_and_keeps_a_running_one() -> None:
    store = InMemoryLightningStore(thread_safe=True)
    done, running = await _finished_and_running(store)
    assert await release_rollouts(store, [done, running, "ro-unknown"]) == [done]
    assert [r.rollout_id for r in await store.query_rollouts()] == [running]
    assert list(await store.query_attempts(done)) == []
    assert await store.collections.spans.size() == 0 and await store.collections.attempts.size() == 1
    events = completion_events(store)
    assert events is not None and done not in events
    assert (await store.statistics())["total_span_bytes"] == 0


async def test_split_mode_releases_through_the_lean_server_and_skips_a_stock_one() -> None:
    lean = LeanStoreServer(
        InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=free_port("127.0.0.1")
    )
    stock = LightningStoreServer(
        InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=free_port("127.0.0.1")
    )
    for server in (lean, stock):
        await server.start()
    try:
        for server, expect_released in ((lean, True), (stock, False)):
            client = LightningStoreClient(server.endpoint)
            try:
                done, _ = await _finished_and_running(client)
                released = await release_rollouts(client, [done])
                assert released == ([done] if expect_released else None)
                left = [r.rollout_id for r in await client.query_rollouts()]
                assert (done in left) is not expect_released
            finally:
                await client.close()
    finally:
        for server in (lean, stock):
            await server.stop()


def _schedule(mode: str) -> dict[str, Any]:
    """``TrainConfig`` fields of a schedule for 2 groups per step."""
    if mode == "async":
        return {"async_config": AsyncConfig(max_steps_off_policy=1, groups_per_batch=2)}
    if mode == "stream":
        return {"stream_minibatch_config": StreamMinibatchConfig(groups_per_batch=2, num_minibatches=2)}
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "stream", "async"])
async def test_the_training_loop_leaves_no_finished_rollout_or_span_in_the_store(
    tmp_path: Path, mode: str
) -> None:
    store = InMemoryLightningStore(thread_safe=True)
    runner = DeadlineRunner(QuietTracer(), poll_interval=0.01)
    runner.init(hello_agent)
    runner.init_worker(0, store)
    stop = threading.Event()
    running = asyncio.create_task(runner.iter(event=stop))
    config = TrainConfig(
        log_path=str(tmp_path),
        max_steps=2,
        batch_size=2,
        group_size=2,
        max_tokens=8,
        eval_every=0,
        save_every=0,
        **_schedule(mode),
    )
    try:
        result = await train(
            config, store, hello_dataset()[:8], required_fields=("identity",), show_progress=False
        )
    finally:
        stop.set()
        await running
    assert len(result.steps) == 2 and all(step["train/datums"] > 0 for step in result.steps), mode
    assert list(await store.query_rollouts()) == []
    assert await store.collections.spans.size() == 0
