"""The span recorder: batches off the request path, lingers to coalesce, flushes at once, loses nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from agentlightning.store.memory import InMemoryLightningStore

from agl_tinker.endpoint.span_recorder import CallRecord, SpanRecorder


class CountingStore(InMemoryLightningStore):
    """An in-memory store that counts span writes and can fail the next few."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.fail_next = 0

    async def add_many_spans(self, spans: Any) -> Any:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("store unavailable")
        self.batches.append(len(spans))
        return await super().add_many_spans(spans)


async def _records(store: CountingStore, n: int) -> list[CallRecord]:
    rollout = await store.start_rollout(input={})
    now = time.time()
    return [CallRecord(rollout.rollout_id, rollout.attempt.attempt_id, {"i": i}, now, now) for i in range(n)]


async def test_records_within_the_linger_share_one_store_call() -> None:
    store = CountingStore()
    recorder = SpanRecorder(store, linger_s=0.2)
    await recorder.start()
    for record in await _records(store, 5):
        recorder.record(record)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.4)
    assert store.batches == [5] and recorder.written == 5
    await recorder.close()


async def test_flush_does_not_wait_out_the_linger() -> None:
    store = CountingStore()
    recorder = SpanRecorder(store, linger_s=30.0)
    await recorder.start()
    for record in await _records(store, 3):
        recorder.record(record)
    started = time.perf_counter()
    await asyncio.wait_for(recorder.flush(), timeout=5)
    assert time.perf_counter() - started < 5 and recorder.written == 3
    spans = await store.query_spans((await store.query_rollouts())[0].rollout_id)
    assert sorted(s.attributes["i"] for s in spans) == [0, 1, 2]
    await recorder.close()


async def test_a_full_batch_is_written_without_lingering() -> None:
    store = CountingStore()
    recorder = SpanRecorder(store, linger_s=30.0, max_batch=4)
    await recorder.start()
    for record in await _records(store, 4):
        recorder.record(record)
    for _ in range(100):
        if recorder.written == 4:
            break
        await asyncio.sleep(0.02)
    assert store.batches == [4]
    await recorder.close()


async def test_a_failing_store_delays_spans_but_loses_none() -> None:
    store = CountingStore()
    store.fail_next = 2
    recorder = SpanRecorder(store, linger_s=0.0, retry_delay_s=0.01)
    await recorder.start()
    for record in await _records(store, 3):
        recorder.record(record)
    await asyncio.wait_for(recorder.flush(), timeout=5)
    assert recorder.written == 3 and sum(store.batches) == 3
    assert recorder.failed == 2 * 3 and recorder.dropped == 0  # per span and per failed try, once
    await recorder.close()


class RefusingStore(CountingStore):
    """Refuses every sequence id allocation, as a store does for a rollout it does not know."""

    async def get_many_span_sequence_ids(self, rollout_attempt_ids: Any) -> Any:
        raise ValueError("unknown rollout")


async def test_a_refused_batch_is_dropped_not_failed() -> None:
    store = RefusingStore()
    recorder = SpanRecorder(store, linger_s=0.0, retry_delay_s=0.01)
    await recorder.start()
    for record in await _records(store, 3):
        recorder.record(record)
    await asyncio.wait_for(recorder.flush(), timeout=5)
    assert (recorder.written, recorder.dropped, recorder.failed) == (0, 3, 0)
    await recorder.close()


async def test_records_from_another_thread_are_stored() -> None:
    store = CountingStore()
    recorder = SpanRecorder(store, linger_s=0.01)
    await recorder.start()
    records = await _records(store, 20)
    await asyncio.to_thread(lambda: [recorder.record(r) for r in records])
    await asyncio.wait_for(recorder.flush(), timeout=5)
    assert recorder.written == 20
    await recorder.close()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="linger_s"):
        SpanRecorder(InMemoryLightningStore(), linger_s=-1)
