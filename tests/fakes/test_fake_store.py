"""fakes.store.FaultyStore: delegates everything, injects exactly the faults it is asked for."""

from __future__ import annotations

import time

import agentlightning as agl
import pytest
from agentlightning.store.base import LightningStore
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import AttemptedRollout, Span

from fakes.store import FaultyStore, TransientStoreError


def reward_span(ar: AttemptedRollout, seq: int) -> Span:
    core = agl.emit_reward(1.0, propagate=False)
    return Span.from_core_fields(
        core, rollout_id=ar.rollout_id, attempt_id=ar.attempt.attempt_id, sequence_id=seq
    )


async def claimed(store: LightningStore) -> AttemptedRollout:
    await store.enqueue_rollout(input={"x": 1})
    ar = await store.dequeue_rollout()
    assert ar is not None
    return ar


async def test_delegates_every_method_without_faults() -> None:
    inner = InMemoryLightningStore()
    store = FaultyStore(inner)
    res = await store.add_resources({})
    assert (await store.get_latest_resources()) == res
    ar = await claimed(store)
    await store.add_span(reward_span(ar, 1))
    await store.update_attempt(ar.rollout_id, ar.attempt.attempt_id, status="succeeded")
    done = await store.wait_for_rollouts(rollout_ids=[ar.rollout_id], timeout=0)
    assert [r.status for r in done] == ["succeeded"]
    assert len(await inner.query_spans(ar.rollout_id)) == 1
    assert store.capabilities == inner.capabilities
    assert store.calls["update_attempt"] == 1 and not store.injected


def test_every_store_method_is_wrapped() -> None:
    names = [n for n, v in vars(LightningStore).items() if not n.startswith("_") and callable(v)]
    for name in names:
        if name in ("otlp_traces_endpoint",):
            continue
        assert name in vars(FaultyStore), name


async def test_transient_errors_are_seeded_and_limited_to_chosen_methods() -> None:
    async def pattern(seed: int) -> list[bool]:
        store = FaultyStore(InMemoryLightningStore(), seed=seed, error_rate=0.5, error_methods=["statistics"])
        out = []
        for _ in range(30):
            try:
                await store.statistics()
                out.append(False)
            except TransientStoreError:
                out.append(True)
        await store.get_latest_resources()  # not chosen: never fails
        return out

    a, b, c = await pattern(1), await pattern(1), await pattern(2)
    assert a == b and a != c and 5 < sum(a) < 25
    assert issubclass(TransientStoreError, ConnectionError)


async def test_errors_happen_before_the_real_call() -> None:
    inner = InMemoryLightningStore()
    store = FaultyStore(inner, error_rate=1.0, error_methods=["enqueue_rollout"])
    with pytest.raises(TransientStoreError):
        await store.enqueue_rollout(input={})
    assert len(await inner.query_rollouts()) == 0  # a retry cannot duplicate work


async def test_latency_per_method() -> None:
    store = FaultyStore(InMemoryLightningStore(), latency_by_method={"statistics": 0.05})
    t = time.perf_counter()
    await store.get_latest_resources()
    fast = time.perf_counter() - t
    t = time.perf_counter()
    await store.statistics()
    assert time.perf_counter() - t >= 0.05 > fast


async def test_dropped_and_duplicated_span_writes() -> None:
    inner = InMemoryLightningStore()
    drop = FaultyStore(inner, drop_span_rate=1.0)
    ar = await claimed(drop)
    assert await drop.add_span(reward_span(ar, 1)) is not None  # acknowledged ...
    await drop.add_many_spans([reward_span(ar, 2), reward_span(ar, 3)])
    assert len(await inner.query_spans(ar.rollout_id)) == 0  # ... but never stored
    assert drop.injected["dropped_span"] == 3

    dup = FaultyStore(inner, duplicate_span_rate=1.0)
    ar2 = await claimed(dup)
    await dup.add_span(reward_span(ar2, 1))
    await dup.add_many_spans([reward_span(ar2, 2)])
    assert dup.injected["duplicated_span"] == 2
    assert len(await inner.query_spans(ar2.rollout_id)) == 2  # the real store rejects the second copies


async def test_hung_attempt_swallows_only_its_terminal_update() -> None:
    inner = InMemoryLightningStore()
    store = FaultyStore(inner, hang_attempts=1)
    first, second = await claimed(store), await claimed(store)
    await store.update_attempt(first.rollout_id, "latest", status="running")
    att = await store.update_attempt(first.rollout_id, "latest", status="succeeded")
    assert att.attempt_id == first.attempt.attempt_id and att.status == "running"
    await store.update_attempt(second.rollout_id, second.attempt.attempt_id, status="succeeded")
    statuses = {r.rollout_id: r.status for r in await inner.query_rollouts()}
    assert statuses == {first.rollout_id: "running", second.rollout_id: "succeeded"}
    assert store.hung_attempts == {(first.rollout_id, first.attempt.attempt_id)}


def test_bad_knobs_are_rejected() -> None:
    with pytest.raises(ValueError, match="not LightningStore methods"):
        FaultyStore(InMemoryLightningStore(), error_methods=["nope"])
    with pytest.raises(ValueError, match="error_rate"):
        FaultyStore(InMemoryLightningStore(), error_rate=2.0)
