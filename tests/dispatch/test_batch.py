"""agl_tinker.dispatch.batch: one batch end to end through a real Agent-lightning store.

Runners here are plain coroutines doing what an Agent-lightning runner does with the store API:
dequeue a rollout (which creates its attempt), write a reward span, mark the attempt finished.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.emitter.reward import get_reward_value
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import AttemptedRollout, Rollout, RolloutConfig, Span

from agl_tinker.dispatch.batch import dispatch_batch
from agl_tinker.dispatch.completion import open_completion_source
from agl_tinker.dispatch.source_base import spread_timeouts
from agl_tinker.dispatch.store_calls import StoreCaller
from agl_tinker.dispatch.types import (
    SERVED_CALLS_METADATA_KEY,
    DispatchConfig,
    DispatchError,
    DispatchProgress,
    ProcessError,
)
from agl_tinker.store_server import WAIT_ANY_PATH, LeanStoreServer
from fakes.store import FaultyStore

logging.getLogger("agentlightning").setLevel(logging.CRITICAL)

UNFINISHED = ["queuing", "preparing", "running", "requeuing"]


# ---------------------------------------------------------------------------------------- runners


Behaviour = Callable[[AttemptedRollout], Awaitable["str | None"]]
"""Given the claimed rollout, do the work; return the attempt status to report, or None to hang."""


async def succeed(ar: AttemptedRollout) -> str | None:
    await asyncio.sleep(0.01)
    return "succeeded"


def reward_of(task: dict[str, Any]) -> float:
    return float(task["x"])


@dataclass
class Runners:
    """N runner coroutines on one store, stopped on exit."""

    store: LightningStore
    behaviour: Behaviour = succeed
    n: int = 4
    emit_reward: bool = True
    max_unfinished_seen: int = 0
    dequeued: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Runners:
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(self.n)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self, i: int) -> None:
        while not self._stop.is_set():
            ar = await self.store.dequeue_rollout(worker_id=f"w{i}")
            if ar is None:
                await asyncio.sleep(0.005)  # an idle runner re-checks the queue, as agl runners do
                continue
            self.dequeued += 1
            unfinished = await self.store.query_rollouts(status_in=UNFINISHED)  # type: ignore[arg-type]
            self.max_unfinished_seen = max(self.max_unfinished_seen, len(unfinished))
            status = await self.behaviour(ar)
            if self.emit_reward:
                core = agl.emit_reward(reward_of(ar.input), propagate=False)
                seq = await self.store.get_next_span_sequence_id(ar.rollout_id, ar.attempt.attempt_id)
                span = Span.from_core_fields(
                    core, rollout_id=ar.rollout_id, attempt_id=ar.attempt.attempt_id, sequence_id=seq
                )
                await self.store.add_span(span)
            if status is not None:
                await self.store.update_attempt(ar.rollout_id, ar.attempt.attempt_id, status=status)  # type: ignore[arg-type]


def reward_process(rollout: Rollout, spans: Sequence[Span]) -> dict[str, Any]:
    """A stand-in for reconstruct -> align -> rewards: the reward, or why there is none."""
    rewards = [r for s in spans if (r := get_reward_value(s)) is not None]
    return {"status": rollout.status, "rewards": rewards, "input": rollout.input}


TASKS = [{"x": 1}, {"x": 2}, {"x": 3}]


def memory_store() -> InMemoryLightningStore:
    # scan_debounce_seconds=0: let the store's timeout watchdog run on every call, so timeout tests are fast.
    return InMemoryLightningStore(scan_debounce_seconds=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _served(
    cls: type[LightningStoreServer], store: LightningStore | None = None
) -> AsyncIterator[tuple[LightningStoreClient, LightningStoreClient]]:
    server = cls(store or memory_store(), host="127.0.0.1", port=free_port())
    await server.start()
    algo, runner = LightningStoreClient(server.endpoint), LightningStoreClient(server.endpoint)
    try:
        yield algo, runner
    finally:
        await algo.close()
        await runner.close()
        await server.stop()


@pytest.fixture(params=[LightningStoreServer, LeanStoreServer], ids=["agl-server", "lean-server"])
async def http_stores(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[LightningStoreClient, LightningStoreClient]]:
    """A store server on 127.0.0.1 (its own thread), an algorithm client and a runner client.

    Both Agent-lightning's server and agl-tinker's lean one: dispatch must not tell them apart.
    """
    async with _served(request.param) as clients:
        yield clients


# ------------------------------------------------------------------------------------ in memory


@pytest.mark.parametrize("wait", ["auto", "events", "long_poll"])
async def test_batch_end_to_end_in_memory(wait: str) -> None:
    store = memory_store()
    progress: list[DispatchProgress] = []
    async with Runners(store):
        result = await dispatch_batch(
            store,
            TASKS,
            4,
            reward_process,
            config=DispatchConfig(mode="train", wait=wait, release=False),  # type: ignore[arg-type]
            on_progress=progress.append,
        )
    assert [g.task for g in result.groups] == TASKS
    for g in result.groups:
        assert [o.slot for o in g.outcomes] == [0, 1, 2, 3]
        assert all(r["rewards"] == [float(g.task["x"])] for r in g.results)
        assert all(o.final_status == "succeeded" and o.n_attempts == 1 and o.n_spans == 1 for o in g.outcomes)
    s = result.stats
    assert s.n_rollouts == 12 and s.n_skipped == 0 and s.status_counts == {"succeeded": 12}
    assert len(s.overheads_s) == 12 and all(o >= 0 for o in s.overheads_s)
    assert s.overhead_ms(0.5) is not None
    _check_overhead_split(result)
    assert s.wait_s > 0 and s.wall_s >= s.wait_s
    assert progress[-1] == DispatchProgress(total=12, done=12, in_flight=0, not_started=0)
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    rollouts = await store.query_rollouts()
    assert {r.mode for r in rollouts} == {"train"}
    assert sorted((r.metadata or {})["group_slot"] for r in rollouts) == sorted([0, 1, 2, 3] * 3)


async def test_mode_resources_and_metadata_reach_the_store() -> None:
    store = memory_store()
    res = await store.add_resources({})
    await store.add_resources({})  # a newer snapshot: the batch must still use the one it names
    async with Runners(store):
        cfg = DispatchConfig(mode="val", resources_id=res.resources_id, metadata={"step": 7}, release=False)
        await dispatch_batch(store, TASKS[:1], 2, reward_process, config=cfg)
    for r in await store.query_rollouts():
        assert r.mode == "val" and r.resources_id == res.resources_id
        assert r.metadata is not None and r.metadata["step"] == 7 and r.metadata["group_index"] == 0


@pytest.mark.parametrize("wait", ["events", "long_poll"])
async def test_finished_rollouts_are_released_from_the_store_once_read(wait: str) -> None:
    store = memory_store()
    async with Runners(store):
        result = await dispatch_batch(
            store,
            TASKS,
            4,
            reward_process,
            config=DispatchConfig(wait=wait),  # type: ignore[arg-type]
        )
    assert result.stats.released == 12 and result.stats.summary()["released"] == 12
    assert all(o.result["rewards"] for o in result.outcomes)  # read before they were released
    assert list(await store.query_rollouts()) == [] and await store.collections.spans.size() == 0


@dataclass
class Counts:
    """The endpoint's side of ``DispatchConfig.call_counts``: calls served by (rollout, attempt)."""

    served: dict[tuple[str, str], int] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)

    def served_calls(self, rollout_id: str, attempt_id: str) -> int | None:
        return self.served.get((rollout_id, attempt_id), 0)

    def forget_calls(self, rollout_ids: Iterable[str]) -> None:
        for rid in rollout_ids:
            self.forgotten.append(rid)
            self.served = {k: v for k, v in self.served.items() if k[0] != rid}


async def test_the_calls_served_reach_process_and_are_released_once_read() -> None:
    store = memory_store()
    counts = Counts()

    async def serve_two(ar: AttemptedRollout) -> str | None:
        counts.served[(ar.rollout_id, ar.attempt.attempt_id)] = 2
        return "succeeded"

    def process(rollout: Rollout, spans: Sequence[Span]) -> int | None:
        return (rollout.metadata or {}).get(SERVED_CALLS_METADATA_KEY)

    async with Runners(store, behaviour=serve_two):
        result = await dispatch_batch(store, TASKS, 2, process, config=DispatchConfig(call_counts=counts))
    assert [o.result for o in result.outcomes] == [2] * 6
    assert sorted(counts.forgotten) == sorted(o.rollout_id for o in result.outcomes)
    assert counts.served == {}  # nothing held once read


async def test_failed_rollouts_are_processed_not_dropped() -> None:
    async def fail_odd(ar: AttemptedRollout) -> str:
        return "failed" if ar.input["x"] % 2 else "succeeded"

    store = memory_store()
    async with Runners(store, fail_odd):
        result = await dispatch_batch(store, TASKS, 2, reward_process)
    assert result.stats.status_counts == {"failed": 4, "succeeded": 2}
    assert [o.final_status for o in result.groups[0].outcomes] == ["failed", "failed"]
    assert result.groups[0].results[0]["status"] == "failed"


async def test_in_flight_cap_is_honoured_and_refilled() -> None:
    store = memory_store()
    async with Runners(store, n=8) as runners:
        result = await dispatch_batch(
            store, TASKS * 3, 2, reward_process, config=DispatchConfig(max_in_flight=3)
        )
    assert result.stats.n_rollouts == 18 and result.stats.status_counts == {"succeeded": 18}
    assert result.stats.max_in_flight == 3
    assert runners.max_unfinished_seen <= 3  # what the store itself saw while runners worked


async def test_timeout_then_retry_through_rollout_config() -> None:
    # The first attempt hangs (its runner never reports back); the store times it out and requeues.
    store = FaultyStore(memory_store(), hang_attempts=1)
    rc = RolloutConfig(timeout_seconds=0.3, max_attempts=2, retry_condition=["timeout"])
    async with Runners(store, n=2):
        result = await dispatch_batch(
            store, TASKS[:1], 2, reward_process, config=DispatchConfig(rollout_config=rc)
        )
    outcomes = result.outcomes
    assert [o.final_status for o in outcomes] == ["succeeded", "succeeded"]
    assert sorted(o.n_attempts for o in outcomes) == [1, 2]
    assert all(o.result["rewards"] == [1.0] for o in outcomes)  # spans of the latest attempt only
    assert store.injected["hung_attempt_update"] == 1


async def test_timeout_without_retry_is_reported_as_timeout_in_events_mode() -> None:
    async def hang_first(ar: AttemptedRollout) -> str | None:
        return None if ar.input["x"] == 1 else "succeeded"

    store = memory_store()
    rc = RolloutConfig(timeout_seconds=0.2, max_attempts=1)
    cfg = DispatchConfig(rollout_config=rc, wait="events", watchdog_s=0.05)
    async with Runners(store, hang_first, n=3):
        result = await dispatch_batch(store, TASKS, 1, reward_process, config=cfg)
    assert [o.final_status for o in result.outcomes] == ["timeout", "succeeded", "succeeded"]
    hung = result.outcomes[0]
    assert hung.status == "failed" and hung.attempt_status == "timeout"
    assert hung.result["rewards"] == [1.0]  # its spans still reach process(), which decides to exclude


async def test_batch_timeout_cancels_and_skips_when_no_runner_works() -> None:
    store = memory_store()
    cfg = DispatchConfig(batch_timeout_s=0.2, max_in_flight=4)
    result = await dispatch_batch(store, TASKS, 2, reward_process, config=cfg)
    assert result.stats.n_rollouts == 4 and result.stats.n_skipped == 2
    assert result.stats.status_counts == {"cancelled": 4}
    assert [len(g.outcomes) for g in result.groups] == [2, 2, 0]
    assert all(o.n_attempts == 0 and o.n_spans == 0 for o in result.outcomes)
    assert await store.dequeue_rollout() is None  # nothing left for a late runner


async def test_process_error_stops_the_batch_and_cancels_the_rest() -> None:
    def explode(rollout: Rollout, spans: Sequence[Span]) -> None:
        raise KeyError("no reward span")

    async def slow(ar: AttemptedRollout) -> str:
        await asyncio.sleep(0.01 if ar.input["x"] == 1 else 0.3)
        return "succeeded"

    store = memory_store()
    async with Runners(store, slow, n=1):
        with pytest.raises(ProcessError, match="no reward span") as e:
            await dispatch_batch(store, TASKS, 1, explode)
        assert isinstance(e.value.__cause__, KeyError)
        statuses = sorted(r.status for r in await store.query_rollouts())
        assert statuses == ["cancelled", "cancelled", "succeeded"]


async def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        DispatchConfig(max_in_flight=0)
    with pytest.raises(DispatchError, match="wait='events'"):
        await dispatch_batch(
            FaultyStore(memory_store()), TASKS, 1, reward_process, config=DispatchConfig(wait="events")
        )
    with pytest.raises(ValueError, match="group_size"):
        await dispatch_batch(memory_store(), TASKS, 0, reward_process)


# ------------------------------------------------------------------------------- faults


async def test_transient_store_errors_are_retried() -> None:
    methods = ["enqueue_many_rollouts", "wait_for_rollouts", "get_rollout_by_id", "query_spans"]
    store = FaultyStore(memory_store(), seed=3, error_rate=0.3, error_methods=methods)
    async with Runners(store.inner):
        result = await dispatch_batch(
            store, TASKS, 3, reward_process, config=DispatchConfig(store_retries=10)
        )
    assert result.stats.status_counts == {"succeeded": 9}
    assert sum(store.injected.values()) > 0


async def test_persistent_store_errors_surface_as_store_call_error() -> None:
    store = FaultyStore(memory_store(), error_rate=1.0, error_methods=["enqueue_many_rollouts"])
    with pytest.raises(DispatchError, match="enqueue_many_rollouts failed 3 times"):
        await dispatch_batch(store, TASKS, 1, reward_process, config=DispatchConfig(store_retries=2))


async def test_dropped_and_duplicated_span_writes() -> None:
    dropped = FaultyStore(memory_store(), drop_span_rate=1.0)
    async with Runners(dropped):
        result = await dispatch_batch(dropped, TASKS, 1, reward_process)
    assert all(o.n_spans == 0 and o.result["rewards"] == [] for o in result.outcomes)

    duplicated = FaultyStore(memory_store(), duplicate_span_rate=1.0)
    async with Runners(duplicated):
        result = await dispatch_batch(duplicated, TASKS, 1, reward_process)
    assert duplicated.injected["duplicated_span"] == 3
    assert all(o.n_spans == 1 and len(o.result["rewards"]) == 1 for o in result.outcomes)


async def test_latency_on_every_call_still_completes() -> None:
    store = FaultyStore(memory_store(), latency_s=0.005)
    async with Runners(store.inner):
        result = await dispatch_batch(store, TASKS, 2, reward_process)
    assert result.stats.status_counts == {"succeeded": 6}
    assert store.calls["enqueue_many_rollouts"] == 1


# ------------------------------------------------------------------------------------- over HTTP


async def test_batch_over_http(http_stores: tuple[LightningStoreClient, LightningStoreClient]) -> None:
    algo, runner_store = http_stores
    async with Runners(runner_store, n=4) as runners:
        result = await dispatch_batch(algo, TASKS, 4, reward_process, config=DispatchConfig(max_in_flight=5))
    assert result.stats.status_counts == {"succeeded": 12}
    assert all(r["rewards"] == [float(g.task["x"])] for g in result.groups for r in g.results)
    assert runners.max_unfinished_seen <= 5
    assert (
        len(result.stats.overheads_s) == 12
    )  # latency targets are benchmarks/dispatch.py's job, not a test's
    _check_overhead_split(result)


@pytest.mark.parametrize("slots", [3, 6])
async def test_long_poll_slots_never_ask_the_client_for_more_than_it_allows(
    http_stores: tuple[LightningStoreClient, LightningStoreClient], slots: int
) -> None:
    """Spreading the first slots' timeouts over (0, 0.1] once rounded 0.1 * 3 / 3 above 0.1, which
    ``LightningStoreClient.wait_for_rollouts`` refuses with a ValueError that failed the batch."""
    algo, runner_store = http_stores
    async with Runners(runner_store, n=4):
        result = await dispatch_batch(
            algo, TASKS, 4, reward_process, config=DispatchConfig(long_poll_slots=slots)
        )
    assert result.stats.status_counts == {"succeeded": 12}


@pytest.mark.parametrize("n", range(1, 65))
def test_spread_timeouts_stay_within_the_slice(n: int) -> None:
    timeouts = spread_timeouts(0.1, n)
    assert len(timeouts) == n and timeouts[0] == 0.1
    assert all(0 < t <= 0.1 for t in timeouts)
    assert timeouts == sorted(timeouts, reverse=True)


def _check_overhead_split(result: Any) -> None:
    """Each overhead splits into detection (end -> noticed) and read (noticed -> ready)."""
    s = result.stats
    assert len(s.detects_s) == len(s.reads_s) == len(s.overheads_s)
    for o in result.outcomes:
        assert o.noticed_time is not None and o.detect_s is not None and o.read_s is not None
        assert o.read_s >= 0 and o.detect_s > -0.01  # end_time and noticed_time are wall clocks
        assert o.detect_s + o.read_s == pytest.approx(o.overhead_s)
    assert s.detect_ms(0.5) is not None and s.read_ms(0.5) is not None
    assert {"overhead_ms/detect_p50", "overhead_ms/read_p50"} <= set(s.summary())


async def test_timeout_and_retry_over_http(
    http_stores: tuple[LightningStoreClient, LightningStoreClient],
) -> None:
    algo, runner_store = http_stores
    faulty_runner_side = FaultyStore(runner_store, hang_attempts=1)
    rc = RolloutConfig(timeout_seconds=0.3, max_attempts=2, retry_condition=["timeout"])
    async with Runners(faulty_runner_side, n=2):
        result = await dispatch_batch(
            algo, TASKS[:1], 2, reward_process, config=DispatchConfig(rollout_config=rc)
        )
    assert [o.final_status for o in result.outcomes] == ["succeeded", "succeeded"]
    assert sorted(o.n_attempts for o in result.outcomes) == [1, 2]


async def test_in_process_server_uses_events(
    http_stores: tuple[LightningStoreClient, LightningStoreClient],
) -> None:
    # The algorithm usually holds the LightningStoreServer object itself; it must not long-poll itself.
    server = LightningStoreServer(memory_store(), host="127.0.0.1", port=free_port())
    call = StoreCaller(0)
    assert open_completion_source(server, DispatchConfig(), call).strategy == "events"
    # a client tries wait-for-any first (a stock server makes it fall back: test_batch_over_http)
    assert open_completion_source(http_stores[0], DispatchConfig(), call).strategy == "wait_any"


@pytest.mark.parametrize(
    ("server_cls", "wait", "rollout_reads"),
    [(LeanStoreServer, "wait_any", 0), (LightningStoreServer, "long_poll", None)],
    ids=["lean-server", "agl-server"],
)
async def test_split_mode_learns_completions_by_wait_any_where_the_server_has_it(
    server_cls: type[LightningStoreServer], wait: str, rollout_reads: int | None
) -> None:
    async with _served(server_cls) as (algo, runner_store):
        reads: list[list[str]] = []
        query_rollouts = algo.query_rollouts

        async def counted(**kw: Any) -> Any:
            reads.append(list(kw.get("rollout_id_in") or []))
            return await query_rollouts(**kw)

        algo.query_rollouts = counted  # type: ignore[method-assign]
        async with Runners(runner_store, n=4):
            result = await dispatch_batch(
                algo, TASKS, 4, reward_process, config=DispatchConfig(max_in_flight=5)
            )
    assert result.stats.wait == wait
    assert result.stats.status_counts == {"succeeded": 12}
    assert all(r["rewards"] == [float(g.task["x"])] for g in result.groups for r in g.results)
    # wait-for-any brings each finished rollout with its completion: nothing to read again
    if rollout_reads is not None:
        assert len(reads) == rollout_reads, reads
    else:
        assert sorted(rid for ids in reads for rid in ids) == sorted(o.rollout_id for o in result.outcomes)


async def test_asking_for_wait_any_from_a_stock_server_is_a_clear_error() -> None:
    async with _served(LightningStoreServer) as (algo, runner_store), Runners(runner_store, n=2):
        with pytest.raises(DispatchError, match="no /agl-tinker/waits/any route"):
            await dispatch_batch(algo, TASKS[:1], 1, reward_process, config=DispatchConfig(wait="wait_any"))
    with pytest.raises(DispatchError, match="needs a LightningStoreClient"):
        await dispatch_batch(
            memory_store(), TASKS[:1], 1, reward_process, config=DispatchConfig(wait="wait_any")
        )


async def test_wait_any_reports_a_rollout_the_store_lost() -> None:
    async with _served(LeanStoreServer) as (algo, _):
        request_json = algo._request_json

        async def forgetful(method: str, path: str, **kw: Any) -> Any:
            answer = await request_json(method, path, **kw)  # type: ignore[arg-type]
            if path == WAIT_ANY_PATH:  # as if the store had restarted and lost the batch
                answer = {"finished": [], "unknown": kw["json"]["rollout_ids"]}
            return answer

        algo._request_json = forgetful  # type: ignore[method-assign]
        with pytest.raises(DispatchError, match="not in the store any more"):
            await dispatch_batch(algo, TASKS[:1], 1, reward_process, config=DispatchConfig(wait="wait_any"))
