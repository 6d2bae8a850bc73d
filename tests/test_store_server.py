"""agl_tinker.store_server: Agent-lightning's store server without its slow middlewares, same answers."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from agentlightning.store.base import LightningStoreStatistics
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import EnqueueRolloutRequest
from starlette.middleware.base import BaseHTTPMiddleware

from agl_tinker.cli import build_parser
from agl_tinker.endpoint.span_recorder import CallRecord, SpanRecorder
from agl_tinker.store_middleware import StoreErrorsAsJson, replace_slow_middleware
from agl_tinker.store_release import release_rollouts
from agl_tinker.store_routes import MAX_WAIT_ANY_S, WAIT_ANY_PATH, WaitAnyRequest
from agl_tinker.store_server import LeanStoreServer
from fakes.store import FaultyStore

AGL = "/v1/agl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokenStatsStore(InMemoryLightningStore):
    """A store with one route that fails the way a store bug would."""

    async def statistics(self) -> LightningStoreStatistics:
        raise RuntimeError("statistics exploded")


async def _serving(cls: type[LightningStoreServer], store: InMemoryLightningStore) -> LightningStoreServer:
    server = cls(store, host="127.0.0.1", port=free_port())
    await server.start()
    return server


@pytest.fixture
async def both() -> AsyncIterator[dict[str, str]]:
    """A stock and a lean server, each over its own fresh in-memory store: name -> base URL."""
    servers = {
        "stock": await _serving(LightningStoreServer, InMemoryLightningStore()),
        "lean": await _serving(LeanStoreServer, InMemoryLightningStore()),
    }
    try:
        yield {name: s.endpoint for name, s in servers.items()}
    finally:
        for s in servers.values():
            await s.stop()


def test_the_two_slow_middlewares_are_replaced_by_one_asgi_layer() -> None:
    server = LeanStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=free_port())
    assert server.replaced_middleware
    assert server.app is not None
    stack = server.app.user_middleware
    assert not any(m.cls is BaseHTTPMiddleware for m in stack), stack
    assert [m.cls for m in stack].count(StoreErrorsAsJson) == 1
    # CORS (pure ASGI) stays where Agent-lightning put it: inside the error layer
    stock = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=free_port())
    assert stock.app is not None
    assert [m.cls for m in stack if m.cls is not StoreErrorsAsJson] == [
        m.cls for m in stock.app.user_middleware if m.cls is not BaseHTTPMiddleware
    ]


def test_an_agent_lightning_without_those_middlewares_is_served_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = LeanStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=free_port())
    assert server.app is not None
    before = list(server.app.user_middleware)
    with caplog.at_level(logging.WARNING, logger="agl_tinker.store_server"):
        assert replace_slow_middleware(server.app) is False  # nothing left to replace
    assert server.app.user_middleware == before
    assert "serving it unchanged" in caplog.text


_VOLATILE = ("_id", "_time", "time", "timestamp")


def _normalized(value: Any) -> Any:
    """JSON with ids and clock readings blanked (two stores never agree on those), a traceback's
    frames dropped (the lean server's own frame is one of them): its last line is the error."""
    if isinstance(value, dict):
        return {
            k: "<v>"
            if k.endswith(_VOLATILE) and v is not None
            else v.strip().splitlines()[-1]
            if k == "traceback" and isinstance(v, str)
            else _normalized(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _span_body(
    rollout_id: str, attempt_id: str, sequence_id: int, attributes: dict[str, Any]
) -> dict[str, Any]:
    """A span as ``POST /v1/agl/spans`` takes it (an annotation span with these attributes)."""
    return {
        "rollout_id": rollout_id,
        "attempt_id": attempt_id,
        "sequence_id": sequence_id,
        "trace_id": "0" * 32,
        "span_id": "1" * 16,
        "parent_id": None,
        "name": "agentlightning.annotation",
        "status": {"status_code": "OK"},
        "attributes": attributes,
        "events": [],
        "links": [],
        "start_time": 1.0,
        "end_time": 2.0,
        "context": None,
        "parent": None,
        "resource": {"attributes": {}, "schema_url": ""},
    }


async def _script(base: str) -> list[tuple[str, int, Any]]:
    """The calls a runner and the algorithm make in a batch, plus bad requests; (what, status, body)."""
    out: list[tuple[str, int, Any]] = []
    async with aiohttp.ClientSession(base) as http:

        async def call(what: str, method: str, path: str, **kw: Any) -> Any:
            async with http.request(method, AGL + path, **kw) as r:
                body = await r.json() if r.content_type == "application/json" else await r.text()
                out.append((what, r.status, _normalized(body)))
                return body

        rollouts = await call(
            "enqueue",
            "POST",
            "/queues/rollouts/enqueue",
            json={"rollouts": [{"input": {"x": i}, "metadata": {"group_slot": i}} for i in range(3)]},
        )
        claimed = await call("dequeue", "POST", "/queues/rollouts/dequeue", json={"worker_id": "w"})
        rid, aid = claimed[0]["rollout_id"], claimed[0]["attempt"]["attempt_id"]
        seq = await call(
            "next sequence id", "POST", "/spans/next", json={"rollout_id": rid, "attempt_id": aid}
        )
        reward = {"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": 1.0}
        span = _span_body(rid, aid, seq["sequence_id"], reward)
        await call("add span", "POST", "/spans", json=span)
        await call("update attempt", "POST", f"/rollouts/{rid}/attempts/{aid}", json={"status": "succeeded"})
        await call("wait", "POST", "/waits/rollouts", json={"rollout_ids": [rid], "timeout": 0})
        ids = [r["rollout_id"] for r in rollouts]
        await call("query rollouts", "POST", "/rollouts/search", json={"rollout_id_in": ids})
        await call("query spans", "GET", "/spans", params={"rollout_id": rid, "attempt_id": "latest"})
        await call("rollout by id", "GET", f"/rollouts/{rid}")
        await call("unknown rollout", "GET", "/rollouts/nope")
        await call("statistics", "GET", "/statistics")
        await call("bad body", "POST", "/spans", json={"rollout_id": rid})
        await call("bad json", "POST", "/queues/rollouts/enqueue", data=b"{not json")
        await call("no such route", "GET", "/nothing/here")
        await call("health", "GET", "/health")
    return out


async def test_every_answer_is_the_stock_servers(both: dict[str, str]) -> None:
    stock, lean = await _script(both["stock"]), await _script(both["lean"])
    assert [w for w, _, _ in lean] == [w for w, _, _ in stock]
    for (what, s_status, s_body), (_, l_status, l_body) in zip(stock, lean, strict=True):
        assert (what, l_status) == (what, s_status)
        assert l_body == s_body, what
    statuses = {what: status for what, status, _ in lean}
    assert statuses["enqueue"] == 201 and statuses["add span"] == 201
    assert statuses["bad body"] == 422 and statuses["no such route"] == 404


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the stock server's logger, at debug level, taken on the logger itself.

    Not ``caplog``: Agent-lightning's own logging setup (which the examples' runs call) stops
    ``agentlightning`` records from propagating to the root logger, where caplog listens.
    """
    log = logging.getLogger("agentlightning.store.server")
    handler, level = _Records(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@pytest.mark.parametrize("cls", [LightningStoreServer, LeanStoreServer])
async def test_a_store_error_becomes_a_retryable_500_with_the_stock_body(
    cls: type[LightningStoreServer], server_log: list[logging.LogRecord]
) -> None:
    server = await _serving(cls, BrokenStatsStore())
    try:
        async with aiohttp.ClientSession() as http, http.get(server.endpoint + AGL + "/statistics") as r:
            status, body = r.status, await r.json()
    finally:
        await server.stop()
    assert status == 500
    assert set(body) == {"detail", "error_type", "traceback"}
    assert (body["detail"], body["error_type"]) == ("Internal server error", "RuntimeError")
    assert "statistics exploded" in body["traceback"]
    assert any(
        r.levelno == logging.ERROR and r.getMessage() == "Unhandled application error" for r in server_log
    )


async def test_a_store_refusal_is_a_final_400_where_the_stock_server_answers_500(
    both: dict[str, str],
) -> None:
    """The one answer that differs from the stock server's: a span for a rollout the store does not
    hold (released) is refused with the store's message, and the client does not retry it."""
    span = _span_body("ro-released", "at-1", 1, {})
    answers = {}
    async with aiohttp.ClientSession() as http:
        for name, base in both.items():
            async with http.post(base + AGL + "/spans", json=span) as r:
                answers[name] = (r.status, await r.json())
    assert answers["stock"][0] == 500
    assert answers["lean"] == (400, {"detail": "Rollout ro-released not found", "error_type": "ValueError"})


async def test_the_span_writer_over_http_keeps_a_batchs_live_spans_when_one_rollout_is_gone() -> None:
    """A late call of a released rollout shares a batch with live rollouts' calls: before, the lean
    server's 500 made the writer retry the batch and then drop all of it."""
    store = InMemoryLightningStore()
    server = await _serving(LeanStoreServer, store)
    client = LightningStoreClient(server.endpoint)
    recorder = SpanRecorder(client)  # the endpoint's defaults
    try:
        live = [await store.start_rollout(input={"i": i}) for i in range(2)]
        released = await store.start_rollout(input={"late": True})
        await store.update_attempt(released.rollout_id, released.attempt.attempt_id, status="succeeded")
        assert await release_rollouts(store, [released.rollout_id]) == [released.rollout_id]
        now = time.time()
        # Queued before the writer starts, so the three calls make one batch.
        for rollout in (live[0], released, live[1]):
            recorder.record(CallRecord(rollout.rollout_id, rollout.attempt.attempt_id, {"x": 1}, now, now))
        await recorder.start()
        started = time.perf_counter()
        await asyncio.wait_for(recorder.flush(), timeout=30)
        took = time.perf_counter() - started
        stored = {r.rollout_id: len(await store.query_spans(r.rollout_id, attempt_id="latest")) for r in live}
    finally:
        await recorder.close()
        await client.close()
        await server.stop()
    assert stored == {live[0].rollout_id: 1, live[1].rollout_id: 1}
    assert (recorder.dropped, recorder.failed) == (1, 0)
    assert took < 10, took  # refused at once: not the client's 5xx retries, then the writer's


async def test_requests_are_logged_at_debug_like_the_stock_server(
    server_log: list[logging.LogRecord],
) -> None:
    server = await _serving(LeanStoreServer, InMemoryLightningStore())
    try:
        async with aiohttp.ClientSession() as http, http.get(server.endpoint + AGL + "/statistics") as r:
            assert r.status == 200
    finally:
        await server.stop()
    lines = [r.getMessage() for r in server_log]
    assert any('"GET /v1/agl/statistics HTTP/1.1" 200 in ' in line for line in lines), lines


def test_store_command_binds_loopback_by_default() -> None:
    args = build_parser().parse_args(["store"])
    assert (args.host, args.port) == ("127.0.0.1", 4747)
    args = build_parser().parse_args(["store", "--host", "0.0.0.0", "--port", "5000"])
    assert (args.host, args.port) == ("0.0.0.0", 5000)


# ------------------------------------------------------------------------------- wait for any


async def _wait_any(http: aiohttp.ClientSession, ids: list[str], timeout: float) -> tuple[int, Any, float]:
    t = time.perf_counter()
    async with http.post(AGL + WAIT_ANY_PATH, json={"rollout_ids": ids, "timeout": timeout}) as r:
        return r.status, await r.json(), time.perf_counter() - t


@pytest.fixture
async def lean() -> AsyncIterator[tuple[LeanStoreServer, LightningStoreClient, aiohttp.ClientSession]]:
    server = await _serving(LeanStoreServer, InMemoryLightningStore())
    client = LightningStoreClient(server.endpoint)
    try:
        async with aiohttp.ClientSession(server.endpoint) as http:
            yield server, client, http
    finally:
        await client.close()
        await server.stop()


async def test_wait_any_answers_when_the_first_rollout_finishes_with_it(
    lean: tuple[LeanStoreServer, LightningStoreClient, aiohttp.ClientSession],
) -> None:
    _, client, http = lean
    ids = [r.rollout_id for r in await client.enqueue_many_rollouts([EnqueueRolloutRequest(input={})] * 3)]
    claimed = await client.dequeue_rollout(worker_id="w")
    assert claimed is not None

    async def finish_soon() -> None:
        await asyncio.sleep(0.3)
        await client.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")

    finisher = asyncio.create_task(finish_soon())
    status, body, took = await _wait_any(http, ids, MAX_WAIT_ANY_S)
    await finisher
    assert status == 200
    assert body["unknown"] == []
    [finished] = body["finished"]
    assert finished["rollout_id"] == claimed.rollout_id and finished["status"] == "succeeded"
    assert finished["attempt"]["attempt_id"] == claimed.attempt.attempt_id  # the latest attempt comes along
    assert 0.3 <= took < MAX_WAIT_ANY_S / 2  # woken by the completion, not by the timeout

    # already finished: answered at once, every time
    status, body, took = await _wait_any(http, ids, MAX_WAIT_ANY_S)
    assert [r["rollout_id"] for r in body["finished"]] == [claimed.rollout_id]
    assert took < MAX_WAIT_ANY_S / 2


async def test_wait_any_times_out_empty_and_reports_unknown_ids_at_once(
    lean: tuple[LeanStoreServer, LightningStoreClient, aiohttp.ClientSession],
) -> None:
    _, client, http = lean
    [rollout] = await client.enqueue_many_rollouts([EnqueueRolloutRequest(input={})])
    status, body, took = await _wait_any(http, [rollout.rollout_id], 0.3)
    assert (status, body) == (200, {"finished": [], "unknown": []}) and took >= 0.3
    status, body, took = await _wait_any(http, [rollout.rollout_id, "ro-nope"], MAX_WAIT_ANY_S)
    assert (status, body) == (200, {"finished": [], "unknown": ["ro-nope"]}) and took < MAX_WAIT_ANY_S / 2


async def test_wait_any_checks_its_request(
    lean: tuple[LeanStoreServer, LightningStoreClient, aiohttp.ClientSession],
) -> None:
    _, _, http = lean
    for bad in ({"rollout_ids": [], "timeout": MAX_WAIT_ANY_S + 1}, {"rollout_ids": [], "timeout": -1}, {}):
        async with http.post(AGL + WAIT_ANY_PATH, json=bad) as r:
            assert r.status == 422, bad


async def test_wait_any_needs_completion_events_else_the_route_is_absent() -> None:
    for server in (
        await _serving(LightningStoreServer, InMemoryLightningStore()),  # a stock server
        await _serving(LeanStoreServer, FaultyStore(InMemoryLightningStore())),  # a store without events
    ):
        try:
            async with aiohttp.ClientSession(server.endpoint) as http:
                status, _, _ = await _wait_any(http, ["ro-x"], 0)
            assert status in (404, 405)
        finally:
            await server.stop()


async def test_wait_any_reports_a_rollout_released_while_it_waits_as_unknown() -> None:
    """A watched rollout that finishes and is released between two checks is gone: ``unknown``, not a 500."""
    server = LeanStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=free_port())
    a, b = await server.enqueue_many_rollouts([EnqueueRolloutRequest(input={})] * 2)
    claimed = await server.dequeue_rollout(worker_id="w")
    assert claimed is not None and claimed.rollout_id == a.rollout_id
    check = server.wait_for_rollouts
    checks = 0

    async def check_then_finish_and_release_a(**kwargs: Any) -> Any:
        nonlocal checks
        checks += 1
        done = await check(**kwargs)
        if checks == 1:  # after the first check saw nothing finished, before its watchers start
            await server.update_attempt(a.rollout_id, claimed.attempt.attempt_id, status="succeeded")
            assert await release_rollouts(server, [a.rollout_id]) == [a.rollout_id]
        return done

    server.wait_for_rollouts = check_then_finish_and_release_a  # type: ignore[method-assign]
    ids = [a.rollout_id, b.rollout_id]
    answer = await asyncio.wait_for(
        server.wait_any(WaitAnyRequest(rollout_ids=ids, timeout=MAX_WAIT_ANY_S)), 5
    )
    assert (answer.finished, answer.unknown) == ([], [a.rollout_id])
    for task in list(server._watchers.values()):  # b's watcher, left to lapse in a real server
        task.cancel()
