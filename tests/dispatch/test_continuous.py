"""ContinuousDispatcher: groups in flight across 'steps', caps on the work ahead, requeue to the
front, every rollout of a group read once, unfinished rollouts cancelled when it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import Rollout, Span

from agl_tinker.dispatch import reader as reader_module
from agl_tinker.dispatch.continuous import ContinuousDispatcher, GroupRequest
from agl_tinker.dispatch.store_calls import StoreCaller
from agl_tinker.runners.inprocess import InProcessRunners

GROUP = 2


def _process(rollout: Rollout, spans: Sequence[Span]) -> tuple[str, int]:
    return str(rollout.status), len(spans)


async def _store() -> InMemoryLightningStore:
    store = InMemoryLightningStore()
    await store.add_resources({"main_llm": agl.LLM(endpoint="http://127.0.0.1:9/v1", model="m")})
    return store


def _agent(delays: Mapping[int, float]) -> Any:
    async def run(task: Mapping[str, Any], llm: agl.LLM) -> float:
        await asyncio.sleep(delays.get(int(task["n"]), 0.01))  # ok: the agent's own latency
        return 1.0

    return run


def _requests(n: int) -> list[GroupRequest]:
    return [GroupRequest(key=i, task={"n": i}) for i in range(n)]


async def test_groups_come_out_as_they_finish_under_the_group_cap() -> None:
    store = await _store()
    outstanding_seen = []
    async with (
        InProcessRunners(store, _agent({0: 0.6}), concurrency=16),
        ContinuousDispatcher(store, GROUP, _process, max_groups=3) as dispatcher,
    ):
        await dispatcher.submit(_requests(6))
        order = []
        for _ in range(6):
            outstanding_seen.append(dispatcher.running_groups + dispatcher.waiting_groups)
            group = await dispatcher.next_group()
            order.append(group.request.key)
            assert [o.slot for o in group.outcomes] == list(range(GROUP))
            assert all(o.result == ("succeeded", 1) for o in group.outcomes)  # the reward span
    assert max(outstanding_seen) <= 3
    assert sorted(order) == list(range(6))
    assert order.index(0) >= 2  # the slow group did not hold the others back


async def test_finished_rollouts_are_released_from_the_store_once_read() -> None:
    """Continuous dispatch releases what it read, as batch dispatch does (the store stays flat)."""
    store = await _store()
    async with (
        InProcessRunners(store, _agent({}), concurrency=16),
        ContinuousDispatcher(store, GROUP, _process, max_groups=2) as dispatcher,
    ):
        await dispatcher.submit(_requests(4))
        groups = [await dispatcher.next_group() for _ in range(4)]
        assert all(o.result == ("succeeded", 1) for g in groups for o in g.outcomes)
    assert dispatcher.released == 4 * GROUP  # closing waits for the releases under way
    assert list(await store.query_rollouts()) == [] and await store.collections.spans.size() == 0


async def test_a_group_is_handed_on_before_its_release_from_the_store_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store release is off the path from a finished group to the trainer; closing awaits it."""
    store = await _store()
    gate = asyncio.Event()
    release = reader_module.release_rollouts

    async def held_release(store: Any, rollout_ids: Sequence[str]) -> list[str] | None:
        await gate.wait()
        return await release(store, rollout_ids)

    monkeypatch.setattr(reader_module, "release_rollouts", held_release)
    async with (
        InProcessRunners(store, _agent({}), concurrency=16),
        ContinuousDispatcher(store, GROUP, _process) as dispatcher,
    ):
        await dispatcher.submit(_requests(2))
        groups = [await asyncio.wait_for(dispatcher.next_group(), 30) for _ in range(2)]
        assert sorted(g.request.key for g in groups) == [0, 1]
        assert dispatcher.released == 0 and len(await store.query_rollouts()) == 2 * GROUP
        asyncio.get_running_loop().call_later(0.05, gate.set)
    assert dispatcher.released == 2 * GROUP
    assert list(await store.query_rollouts()) == [] and await store.collections.spans.size() == 0


async def test_requeued_group_goes_first_and_the_rollout_cap_holds() -> None:
    store = await _store()
    async with (
        InProcessRunners(store, _agent({}), concurrency=16),
        ContinuousDispatcher(store, GROUP, _process, max_groups=1, max_rollouts=GROUP) as dispatcher,
    ):
        await dispatcher.submit(_requests(3))
        first = await dispatcher.next_group()
        assert dispatcher.rollouts_in_flight <= GROUP
        await dispatcher.submit([GroupRequest(first.request.key, first.request.task, attempt=1)], front=True)
        rest = [await dispatcher.next_group() for _ in range(3)]
    # handing group 0 out dispatched group 1 at once; the requeued 0 goes before group 2
    assert [(g.request.key, g.request.attempt) for g in (first, *rest)] == [(0, 0), (1, 0), (0, 1), (2, 0)]
    assert dispatcher.max_rollouts_seen <= GROUP


async def test_closing_cancels_unfinished_rollouts_in_the_store() -> None:
    store = await _store()
    async with InProcessRunners(store, _agent({0: 30.0}), concurrency=4):
        async with ContinuousDispatcher(store, GROUP, _process) as dispatcher:
            await dispatcher.submit(_requests(1))
            await asyncio.sleep(0.2)  # ok: let the runners claim the rollouts
            assert dispatcher.running_groups == 1
        rollouts = await store.query_rollouts()
    assert len(rollouts) == GROUP and {r.status for r in rollouts} == {"cancelled"}


async def test_process_errors_surface_from_next_group() -> None:
    store = await _store()

    def broken(rollout: Rollout, spans: Sequence[Span]) -> None:
        raise ValueError("boom")

    async with (
        InProcessRunners(store, _agent({}), concurrency=4),
        ContinuousDispatcher(store, GROUP, broken) as dispatcher,
    ):
        await dispatcher.submit(_requests(1))
        with pytest.raises(Exception, match="boom"):
            await asyncio.wait_for(dispatcher.next_group(), 30)


class _SpansHeld:
    """Stands in for ``store.query_spans``: the rollouts in ``held`` (all of them: ``None``) never
    get their spans; ``all_asked`` is set once ``expected`` rollouts were asked for."""

    def __init__(self, store: InMemoryLightningStore, expected: int, held: set[str] | None = None) -> None:
        self.query_spans = store.query_spans
        self.expected = expected
        self.held = held
        self.asked: set[str] = set()
        self.all_asked = asyncio.Event()

    async def __call__(self, rollout_id: str, *args: Any, **kwargs: Any) -> Sequence[Span]:
        self.asked.add(rollout_id)
        if len(self.asked) >= self.expected:
            self.all_asked.set()
        if self.held is None or rollout_id in self.held:
            await asyncio.Event().wait()  # ok: a read that does not end before the shutdown
        return await self.query_spans(rollout_id, *args, **kwargs)


async def _finished_rollouts(store: InMemoryLightningStore, n: int) -> list[str]:
    """``n`` rollouts run to ``succeeded`` by in-process runners; their ids."""
    async with InProcessRunners(store, _agent({}), concurrency=n):
        enqueued = await store.enqueue_many_rollouts(
            [agl.EnqueueRolloutRequest(input={"n": i}) for i in range(n)]
        )
        ids = [r.rollout_id for r in enqueued]
        for _ in range(3000):
            if all(r.status == "succeeded" for r in await store.query_rollouts(rollout_id_in=ids)):
                return ids
            await asyncio.sleep(0.01)  # ok: polling the store for the runners' results
    raise AssertionError("the rollouts did not finish")


async def test_a_read_round_cancelled_at_shutdown_releases_what_it_had_read() -> None:
    """The rollouts a cancelled round had read are taken: the store forgets them, as after a
    whole round. The one still being read stays as it finished."""
    store = await _store()
    read, unread = await _finished_rollouts(store, 2)
    store.query_spans = _SpansHeld(store, 2, held={unread})  # type: ignore[method-assign]
    source = SimpleNamespace(finished_rollouts={}, noticed={})
    processed = asyncio.Event()

    def process(rollout: Rollout, spans: Sequence[Span]) -> tuple[str, int]:
        processed.set()  # the first rollout's read ends with this call
        return _process(rollout, spans)

    reader = reader_module.RolloutReader(store, process, StoreCaller(0))
    round_ = asyncio.create_task(reader.read({read: (0, 0), unread: (0, 1)}, source))  # type: ignore[arg-type]
    await asyncio.wait_for(processed.wait(), 30)
    round_.cancel()
    with pytest.raises(asyncio.CancelledError):
        await round_
    assert reader.released == 1
    assert [(r.rollout_id, r.status) for r in await store.query_rollouts()] == [(unread, "succeeded")]


async def test_closing_leaves_the_rollouts_of_a_cancelled_read_round_as_they_finished() -> None:
    """A round still reading at close holds finished rollouts: closing does not mark them
    cancelled (nor fail on the ones the round released)."""
    store = await _store()
    spans = _SpansHeld(store, GROUP)
    store.query_spans = spans  # type: ignore[method-assign]
    async with (
        InProcessRunners(store, _agent({}), concurrency=4),
        ContinuousDispatcher(store, GROUP, _process) as dispatcher,
    ):
        await dispatcher.submit(_requests(1))
        await asyncio.wait_for(spans.all_asked.wait(), 30)
    rollouts = await store.query_rollouts()
    assert len(rollouts) == GROUP and {r.status for r in rollouts} == {"succeeded"}
