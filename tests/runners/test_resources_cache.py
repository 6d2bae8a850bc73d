"""``fast_runner()`` fetches each resources snapshot once, not before every rollout.

Agent-lightning's runner asks the store for the rollout's resources before each rollout: one of
the five store round trips of a one-call rollout, for a snapshot ``TinkerAlgorithm`` never changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import ResourcesUpdate
from hypothesis import given, settings
from hypothesis import strategies as st
from quiet_tracer import QuietTracer

from agl_tinker.algorithm import fast_runner
from agl_tinker.runners.deadline import DeadlineRunner
from agl_tinker.runners.resources_cache import ResourcesCache


class _CountingStore(InMemoryLightningStore):
    """The in-memory store, counting ``get_resources_by_id`` calls per id."""

    def __init__(self) -> None:
        super().__init__(scan_debounce_seconds=0)
        self.fetched: list[str] = []

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        self.fetched.append(resources_id)
        return await super().get_resources_by_id(resources_id)


SEEN: list[str] = []


async def _agent(task: dict[str, Any], llm: agl.LLM) -> float:
    SEEN.append(llm.endpoint)
    return 1.0


async def _run(store: _CountingStore, runner: DeadlineRunner, n: int) -> None:
    runner.init(agl.rollout(_agent))
    runner.init_worker(0, store)
    await asyncio.wait_for(runner.iter(), timeout=20)
    finished = await store.query_rollouts()
    assert [r.status for r in finished] == ["succeeded"] * n


async def _two_snapshots(store: _CountingStore) -> tuple[str, str]:
    train = await store.add_resources({"llm": agl.LLM(endpoint="http://127.0.0.1:9/train", model="m")})
    val = await store.add_resources({"llm": agl.LLM(endpoint="http://127.0.0.1:9/val", model="m")})
    return train.resources_id, val.resources_id


async def test_a_runner_fetches_each_snapshot_once_and_hands_the_agent_the_right_one() -> None:
    store = _CountingStore()
    train, val = await _two_snapshots(store)
    for rid in (train, val, train, train, val, train):
        await store.enqueue_rollout({"x": 1}, resources_id=rid)
    SEEN.clear()

    await _run(store, DeadlineRunner(QuietTracer(), max_rollouts=6, poll_interval=0.01), 6)

    assert sorted(store.fetched) == sorted([train, val])
    handed = [endpoint.rsplit("/", 1)[1] for endpoint in SEEN]
    assert handed == ["train", "val", "train", "train", "val", "train"]


async def test_without_the_cache_the_runner_fetches_before_every_rollout_as_agent_lightning_does() -> None:
    store = _CountingStore()
    train, _ = await _two_snapshots(store)
    for _ in range(3):
        await store.enqueue_rollout({"x": 1}, resources_id=train)

    runner = DeadlineRunner(QuietTracer(), max_rollouts=3, poll_interval=0.01, cache_resources=False)
    await _run(store, runner, 3)

    assert store.fetched == [train] * 3 and runner.resources is None


def test_fast_runner_caches_unless_told_not_to() -> None:
    cached, uncached = fast_runner(), fast_runner(cache_resources=False)
    assert isinstance(cached, DeadlineRunner) and isinstance(cached.resources, ResourcesCache)
    assert isinstance(uncached, DeadlineRunner) and uncached.resources is None


async def test_a_missing_snapshot_is_not_kept_and_is_asked_again() -> None:
    store = _CountingStore()
    cache = ResourcesCache()
    assert await cache.get(store, "rs-missing") is None
    assert await cache.get(store, "rs-missing") is None
    assert store.fetched == ["rs-missing", "rs-missing"] and len(cache) == 0


def test_a_cache_of_no_snapshots_is_refused() -> None:
    with pytest.raises(ValueError, match="max_snapshots must be >= 1"):
        ResourcesCache(0)


@settings(max_examples=40, deadline=None)
@given(
    asks=st.lists(st.integers(min_value=0, max_value=5), max_size=30),
    size=st.integers(min_value=1, max_value=4),
)
def test_the_cache_answers_like_the_store_holds_at_most_its_size_and_fetches_only_what_it_lacks(
    asks: list[int], size: int
) -> None:
    """Against a least-recently-used model: same answers as the store, a fetch exactly on a miss."""

    async def check() -> None:
        store = _CountingStore()
        ids = [
            (await store.add_resources({"llm": agl.LLM(endpoint=f"http://h/{i}", model="m")})).resources_id
            for i in range(6)
        ]
        cache = ResourcesCache(size)
        model: list[str] = []  # least recently used first
        for i in asks:
            rid = ids[i]
            fetches = cache.fetches
            got = await cache.get(store, rid)
            assert got is not None and got.resources_id == rid
            assert cache.fetches == fetches + (rid not in model)
            if rid in model:
                model.remove(rid)
            model.append(rid)
            del model[:-size]
            assert len(cache) == len(model) <= size

    asyncio.run(check())
