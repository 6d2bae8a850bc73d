"""agl_tinker.dispatch.completion: each completion source on its own, against real Agent-lightning stores.

A rollout is finished here the way a runner finishes it: dequeue (creates the attempt), then
``update_attempt(status="succeeded")``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import AttemptedRollout

from agl_tinker.dispatch.completion import CompletionSource, open_completion_source
from agl_tinker.dispatch.event_source import StoreEventsSource
from agl_tinker.dispatch.poll_sources import LongPollSource, WaitAnySource
from agl_tinker.dispatch.store_calls import StoreCaller
from agl_tinker.dispatch.types import DispatchConfig, DispatchError, RolloutsLost
from agl_tinker.store_server import LeanStoreServer

logging.getLogger("agentlightning").setLevel(logging.CRITICAL)

CALL = StoreCaller(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _client_of(cls: type[LightningStoreServer]) -> AsyncIterator[LightningStoreClient]:
    server = cls(InMemoryLightningStore(scan_debounce_seconds=0), host="127.0.0.1", port=_free_port())
    await server.start()
    client = LightningStoreClient(server.endpoint)
    try:
        yield client
    finally:
        await client.close()
        await server.stop()


async def _enqueue(store: LightningStore, n: int) -> list[str]:
    return [(await store.enqueue_rollout(input={"i": i})).rollout_id for i in range(n)]


async def _finish_next(store: LightningStore) -> str:
    attempted = await store.dequeue_rollout(worker_id="w")
    assert attempted is not None
    await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded")
    return attempted.rollout_id


async def _collect(source: CompletionSource, n: int) -> list[str]:
    """Every id the source yields until ``n`` came, failing on a repeat."""
    seen: list[str] = []
    async with asyncio.timeout(30):
        while len(seen) < n:
            seen.extend(await source.next_finished())
    assert len(seen) == len(set(seen)), f"an id was yielded twice: {seen}"
    return seen


# ------------------------------------------------------------------------------- the factory


async def test_factory_picks_the_strategy_the_store_serves() -> None:
    store = InMemoryLightningStore()
    assert isinstance(open_completion_source(store, DispatchConfig(), CALL), StoreEventsSource)
    assert isinstance(open_completion_source(store, DispatchConfig(wait="long_poll"), CALL), LongPollSource)
    with pytest.raises(DispatchError, match="wait_any"):
        open_completion_source(store, DispatchConfig(wait="wait_any"), CALL)
    async with _client_of(LeanStoreServer) as client:
        source = open_completion_source(client, DispatchConfig(), CALL)
        assert isinstance(source, WaitAnySource) and source.strategy == "wait_any"
        with pytest.raises(DispatchError, match="events"):
            open_completion_source(client, DispatchConfig(wait="events"), CALL)
        assert open_completion_source(client, DispatchConfig(wait="long_poll"), CALL).strategy == "long_poll"


# ---------------------------------------------------------------------------------- events


async def test_events_source_yields_each_finished_rollout_once() -> None:
    store = InMemoryLightningStore()
    source = open_completion_source(store, DispatchConfig(), CALL)
    assert source.strategy == "events"
    ids = await _enqueue(store, 3)
    source.watch(ids)
    try:
        finished = [await _finish_next(store) for _ in ids]
        assert sorted(await _collect(source, 3)) == sorted(finished)
        assert set(source.noticed) == set(ids)
        assert source.finished_rollouts == {}  # events carry no rollout: the reader queries it
    finally:
        await source.aclose()


async def test_events_source_finds_a_rollout_without_event_by_its_watchdog_tick() -> None:
    store = InMemoryLightningStore(scan_debounce_seconds=0)
    source = StoreEventsSource(store, DispatchConfig(watchdog_s=0.01), CALL, events={})
    ids = await _enqueue(store, 1)
    source.watch(ids)
    try:
        await _finish_next(store)
        assert await _collect(source, 1) == ids
    finally:
        await source.aclose()


# ------------------------------------------------------------------------------- long poll


async def test_long_poll_source_sees_rollouts_no_slot_holds_through_its_sweep() -> None:
    store = InMemoryLightningStore()
    config = DispatchConfig(wait="long_poll", long_poll_s=0.05, long_poll_slots=1)
    source = open_completion_source(store, config, CALL)
    assert isinstance(source, LongPollSource) and source.strategy == "long_poll"
    ids = await _enqueue(store, 4)
    source.watch(ids)
    try:
        for _ in ids:
            await _finish_next(store)
        assert sorted(await _collect(source, 4)) == sorted(ids)
    finally:
        await source.aclose()


async def test_long_poll_source_reports_a_rollout_the_store_does_not_know() -> None:
    store = InMemoryLightningStore()
    source = LongPollSource(store, DispatchConfig(wait="long_poll", long_poll_s=0.05), CALL)
    source.watch(["ro-never-enqueued"])
    try:
        with pytest.raises(RolloutsLost, match="ro-never-enqueued"):
            async with asyncio.timeout(30):
                await source.next_finished()
    finally:
        await source.aclose()


# -------------------------------------------------------------------------------- wait-any


async def test_wait_any_source_brings_the_finished_rollout_with_its_attempt() -> None:
    async with _client_of(LeanStoreServer) as client:
        source = open_completion_source(client, DispatchConfig(wait="wait_any"), CALL)
        ids = await _enqueue(client, 2)
        source.watch(ids)
        try:
            for _ in ids:
                await _finish_next(client)
            assert sorted(await _collect(source, 2)) == sorted(ids)
            assert source.strategy == "wait_any"
            assert set(source.finished_rollouts) == set(ids)
            assert all(isinstance(r, AttemptedRollout) for r in source.finished_rollouts.values())
        finally:
            await source.aclose()


async def test_wait_any_source_falls_back_to_long_poll_on_a_stock_server() -> None:
    async with _client_of(LightningStoreServer) as client:
        source = open_completion_source(client, DispatchConfig(), CALL)
        ids = await _enqueue(client, 2)
        source.watch(ids)
        try:
            for _ in ids:
                await _finish_next(client)
            assert sorted(await _collect(source, 2)) == sorted(ids)
            assert source.strategy == "long_poll"
            assert source.finished_rollouts == {}
        finally:
            await source.aclose()


async def test_wait_any_source_without_fallback_fails_on_a_stock_server() -> None:
    async with _client_of(LightningStoreServer) as client:
        source = open_completion_source(client, DispatchConfig(wait="wait_any"), CALL)
        source.watch(await _enqueue(client, 1))
        try:
            with pytest.raises(DispatchError, match=r"no .* route"):
                async with asyncio.timeout(30):
                    await source.next_finished()
        finally:
            await source.aclose()
