"""The span recorder never waits forever on a store that is gone: bounded retries, bounded close."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from agentlightning.store.memory import InMemoryLightningStore

from agl_tinker.endpoint.span_recorder import CallRecord, SpanRecorder


class BrokenStore(InMemoryLightningStore):
    """Span writes fail the way a dead or restarted store server makes them fail."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.writes = 0

    async def _fail(self) -> Any:
        self.writes += 1
        if self.mode == "down":
            raise aiohttp.ClientConnectorError(None, OSError(111, "Connection refused"))  # type: ignore[arg-type]
        if self.mode == "hang":
            await asyncio.Event().wait()
        info = aiohttp.RequestInfo(aiohttp.client.URL("http://store/v1/agl/spans"), "POST", {})  # type: ignore[arg-type]
        status = 500 if self.mode == "500" else 400
        raise aiohttp.ClientResponseError(info, (), status=status, message="unknown rollout")

    async def add_many_spans(self, spans: Any) -> Any:
        return await self._fail()

    async def add_span(self, span: Any) -> Any:
        return await self._fail()


async def _recorder_with(store: BrokenStore, n: int, **kwargs: Any) -> SpanRecorder:
    rollout = await store.start_rollout(input={})
    recorder = SpanRecorder(store, retry_delay_s=0.01, linger_s=0.0, **kwargs)
    await recorder.start()
    now = time.time()
    for i in range(n):
        recorder.record(CallRecord(rollout.rollout_id, rollout.attempt.attempt_id, {"i": i}, now, now))
    return recorder


async def test_a_store_that_is_down_costs_max_attempts_then_the_spans_are_dropped() -> None:
    store = BrokenStore("down")
    recorder = await _recorder_with(store, 3, max_attempts=3)
    await asyncio.wait_for(recorder.flush(), 10)
    assert recorder.dropped == 3 and recorder.written == 0
    assert store.writes == 3
    await asyncio.wait_for(recorder.close(), 10)


async def test_a_500_unknown_rollout_from_a_restarted_store_is_not_retried_forever() -> None:
    store = BrokenStore("500")
    recorder = await _recorder_with(store, 2, max_attempts=2)
    await asyncio.wait_for(recorder.flush(), 10)
    assert recorder.dropped == 2 and store.writes == 2


async def test_a_4xx_refusal_is_never_retried() -> None:
    store = BrokenStore("400")
    recorder = await _recorder_with(store, 2, max_attempts=5)
    await asyncio.wait_for(recorder.flush(), 10)
    assert recorder.dropped == 2
    assert store.writes == 1 + 2  # the batch once, then each span once: no retry


async def test_close_gives_up_after_close_timeout_on_a_store_that_never_answers() -> None:
    store = BrokenStore("hang")
    recorder = await _recorder_with(store, 4, close_timeout_s=0.5)
    await asyncio.sleep(0.05)  # the writer is now stuck inside the store call
    started = time.perf_counter()
    await asyncio.wait_for(recorder.close(), 10)
    assert time.perf_counter() - started < 5
    assert recorder.dropped == 4  # counted, including the batch stuck inside the store call
