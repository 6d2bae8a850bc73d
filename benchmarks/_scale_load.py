"""The load of ``scale.py``: simulated runners, as cheap as they can be, in one asyncio process.

Each of ``in_flight`` slots is one runner holding one rollout at a time. Per rollout it makes the
store calls ``fast_runner()`` makes (Agent-lightning 0.3.0's ``LitAgentRunner``: ``dequeue_rollout``
with its worker id; ``get_resources_by_id``, which ``fast_runner()`` answers from its cache after
a snapshot's first rollout (``fetch_resources_each_rollout=True``: every time, as the stock runner
does); the reward span: ``get_next_span_sequence_id`` + ``add_span``; ``update_attempt(succeeded)``),
and ``calls_per_rollout`` chat completions against the endpoint (which records each call's span
into the store, as in split mode). With ``model_ttft_s``/``model_token_s`` each call also takes a
model's time after it is answered (ttft + s per completion token): an offered load, not a closed
loop of instant calls. An empty queue is polled every
``poll_interval_for(in_flight)`` s, as ``fit()`` sets its runners (50 ms up to 25 runners, ~2 s
for 1024), each slot starting at a random point of its first interval, as runners do (not all at
once); ``calls_per_rollout=0`` is a level of idle runners that only poll. A feeder plays the
algorithm's part on the store: it keeps each slot's next rollout queued (one enqueue request per
top-up, as a step enqueues its batch), and a releaser forgets finished
rollouts 10 s after they finished (the algorithm releases what it has read; late span writes
still land).

Requests are raw aiohttp calls with bodies serialized once: the generator spends its CPU on
sockets, not on pydantic models, so the servers, not it, are what saturates. The process pins
itself to the last CPU (the servers keep the others to themselves on an otherwise idle machine)
and can lower its priority (``AGL_BENCH_LOAD_NICE``, default 0: on a machine others load, a
niced generator starves first).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import deque
from typing import Any

from agl_tinker.algorithm import poll_interval_for

ENQUEUE_BATCH = 64  # the feeder tops the queue up once this many are missing
RELEASE_AFTER_S = 10.0
MAX_WARMUP_S = 60.0
IDLE_WARMUP_S = 3.0


def _settle_process() -> None:
    """Pin to the last CPU (and lower the priority if asked): the servers get first call on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    os.nice(int(os.environ.get("AGL_BENCH_LOAD_NICE", "0")))


def reward_span_template() -> dict[str, Any]:
    """A reward span as ``agl.emit_reward`` + ``Span.from_core_fields`` build it (ids replaced per use)."""
    import agentlightning as agl
    from agentlightning.types import Span

    core = agl.emit_reward(1.0, propagate=False)
    span = Span.from_core_fields(core, rollout_id="R", attempt_id="A", sequence_id=0)
    return span.model_dump(mode="json")


class Load:
    """One level's simulated runners and feeder against ``store_url`` and the endpoint."""

    def __init__(
        self,
        store_url: str,
        llm_template: str,
        resources: dict[str, Any],
        in_flight: int,
        calls: int,
        seconds: float,
        model: str,
        model_ttft_s: float = 0.0,
        model_token_s: float = 0.0,
        model_tokens: int | None = None,
        fetch_resources_each_rollout: bool = False,
    ) -> None:
        self.api = store_url + "/v1/agl"
        self.llm_template = llm_template
        self.resources = resources
        self.in_flight = in_flight
        self.calls = calls
        self.seconds = seconds
        self.model_ttft_s = model_ttft_s
        self.model_token_s = model_token_s
        self.model_tokens = model_tokens  # tokens each call is charged for; None: the answer's own
        self.fetch_resources_each_rollout = fetch_resources_each_rollout
        self.poll_s = poll_interval_for(in_flight)
        self.chat = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
        ).encode()
        self.span = reward_span_template()
        self.started = 0  # rollouts each slot completed, for the warm-up's end
        self.finished: deque[tuple[float, str]] = deque()  # not yet released
        self.n_finished = 0
        self.measuring = False
        self.stopping = False
        self.stats: dict[str, Any] = {
            "rollouts": 0,
            "calls": 0,
            "errors": 0,
            "dispatch_ms": [],
            "dispatch_start_ms": [],
            "dispatch_finish_ms": [],
            "store_ms_by_kind": {},
            "empty_dequeues": 0,
            "model_s": [],
            "call_ms": [],
            "store_ms": [],
            "dequeues": 0,
        }
        self.error_kinds: dict[str, int] = {}

    async def _post(self, http: Any, path: str, body: bytes, kind: str) -> Any:
        t = time.perf_counter()
        async with http.post(self.api + path, data=body, headers=_JSON) as r:
            data = await r.read()
            ok = r.status < 300
        got = json.loads(data) if ok else None
        if kind == "dequeue" and not got:
            kind = "dequeue_empty"
        self._store_timed(t, ok, kind)
        return got

    async def _get(self, http: Any, path: str, kind: str) -> Any:
        t = time.perf_counter()
        async with http.get(self.api + path) as r:
            data = await r.read()
            ok = r.status < 300
        self._store_timed(t, ok, kind)
        return json.loads(data) if ok else None

    def _store_timed(self, t: float, ok: bool, kind: str) -> None:
        if self.measuring:
            ms = (time.perf_counter() - t) * 1000
            self.stats["store_ms"].append(ms)
            self.stats["store_ms_by_kind"].setdefault(kind, []).append(ms)
            if kind.startswith("dequeue"):
                self.stats["dequeues"] += 1
            if kind == "dequeue_empty":
                self.stats["empty_dequeues"] += 1
        if not ok:
            self._error(kind)

    def _error(self, kind: str) -> None:
        if self.measuring:
            self.stats["errors"] += 1
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    async def _slot(self, http: Any, i: int, first: list[bool]) -> None:
        dequeue = json.dumps({"limit": 1, "worker_id": f"Worker-{i}"}).encode()
        known_resources: set[str] = set()  # this runner's resources cache
        await asyncio.sleep(random.uniform(0, self.poll_s))  # ok: runners start out of phase
        while not self.stopping:
            t0 = time.perf_counter()
            got = await self._post(http, "/queues/rollouts/dequeue", dequeue, "dequeue")
            if not got:
                await asyncio.sleep(self.poll_s)  # ok: fast_runner's poll of an empty queue
                continue
            rollout = got[0]
            rid, aid = rollout["rollout_id"], rollout["attempt"]["attempt_id"]
            if self.fetch_resources_each_rollout or rollout["resources_id"] not in known_resources:
                await self._get(http, f"/resources/{rollout['resources_id']}", "resources")
                known_resources.add(rollout["resources_id"])
            start = time.perf_counter() - t0
            if self.measuring:
                self.stats["dispatch_start_ms"].append(start * 1000)
            url = self.llm_template.replace("RID", rid).replace("AID", aid) + "/chat/completions"
            for _ in range(self.calls):
                await self._call(http, url)
            t = time.perf_counter()
            seq = await self._post(
                http,
                "/spans/next",
                json.dumps({"rollout_id": rid, "attempt_id": aid}).encode(),
                "sequence_id",
            )
            span = {
                **self.span,
                "rollout_id": rid,
                "attempt_id": aid,
                "sequence_id": seq["sequence_id"] if seq else 0,
                "span_id": os.urandom(8).hex(),
                "trace_id": os.urandom(16).hex(),
            }
            await self._post(http, "/spans", json.dumps(span).encode(), "span")
            await self._post(http, f"/rollouts/{rid}/attempts/{aid}", b'{"status": "succeeded"}', "finish")
            finish = time.perf_counter() - t
            self.finished.append((time.monotonic(), rid))
            self.n_finished += 1
            if not first[i]:
                first[i] = True
                self.started += 1
            if self.measuring:  # finished inside the window
                self.stats["rollouts"] += 1
                self.stats["dispatch_finish_ms"].append(finish * 1000)
                self.stats["dispatch_ms"].append((start + finish) * 1000)

    async def _call(self, http: Any, url: str) -> None:
        """One chat completion; then the model's time for it, when the load models one."""
        t = time.perf_counter()
        async with http.post(url, data=self.chat, headers=_JSON) as r:
            data = await r.read()
            ok = r.status == 200
        if self.measuring:
            self.stats["call_ms"].append((time.perf_counter() - t) * 1000)
            if ok:
                self.stats["calls"] += 1
        if not ok:
            self._error("chat")
        elif self.model_ttft_s or self.model_token_s:
            tokens = self.model_tokens or json.loads(data)["usage"]["completion_tokens"]
            model_s = self.model_ttft_s + self.model_token_s * tokens
            if self.measuring:
                self.stats["model_s"].append(model_s)
            await asyncio.sleep(model_s)  # ok: the model's time for this call (the offered load)

    async def _feed(self, http: Any) -> None:
        """Keep every slot's next rollout queued (``in_flight`` running, as many waiting), in one
        enqueue request per tick as a step enqueues its batch; a second task releases finished
        rollouts. Slots then seldom find the queue empty, as in a step whose batch is enqueued."""
        resources = await self._post(http, "/resources", json.dumps(self.resources).encode(), "add_resources")
        rid = resources["resources_id"]
        one = {"input": {"task": 0}, "mode": "train", "resources_id": rid, "config": None, "metadata": None}
        releaser = asyncio.create_task(self._release_loop(http))
        pending = 0  # enqueued, not yet finished
        seen = 0
        while not self.stopping and self.calls == 0:  # idle runners: nothing to enqueue
            await asyncio.sleep(0.1)  # ok: the feeder's tick
        while not self.stopping:
            pending -= self.n_finished - seen
            seen = self.n_finished
            want = 2 * self.in_flight - pending
            if want >= min(ENQUEUE_BATCH, self.in_flight):
                await self._post(
                    http,
                    "/queues/rollouts/enqueue",
                    json.dumps({"rollouts": [one] * want}).encode(),
                    "enqueue",
                )
                pending += want
            await asyncio.sleep(0.02)  # ok: the feeder's tick
        releaser.cancel()

    async def _release_loop(self, http: Any) -> None:
        """Release the rollouts finished ``RELEASE_AFTER_S`` ago, every half second, until cancelled."""
        while True:
            ids: list[str] = []
            horizon = time.monotonic() - RELEASE_AFTER_S
            while self.finished and self.finished[0][0] < horizon:
                ids.append(self.finished.popleft()[1])
            if ids:
                body = json.dumps({"rollout_ids": ids}).encode()
                await self._post(http, "/agl-tinker/rollouts/release", body, "release")
            await asyncio.sleep(0.5)  # ok: the releaser's tick

    async def run(self, servers: dict[str, int]) -> dict[str, Any]:
        """Warm up until every slot finished a rollout (bounded), measure ``seconds``, stop.

        Returns the window's counts and latencies, and each server's (``name -> pid``) CPU
        seconds per wall second over the window (``<name>_cpu_frac``) and RSS at its end.
        """
        import aiohttp
        import psutil

        procs = {name: psutil.Process(pid) for name, pid in servers.items()}

        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
        )
        first = [False] * self.in_flight
        feeder = asyncio.create_task(self._feed(http))
        slots = [asyncio.create_task(self._slot(http, i, first)) for i in range(self.in_flight)]
        t0 = time.monotonic()
        warmup_s = IDLE_WARMUP_S if self.calls == 0 else MAX_WARMUP_S
        while self.started < self.in_flight and time.monotonic() - t0 < warmup_s:
            await asyncio.sleep(0.1)  # ok: waiting for the warm-up to end
        self.stats["warmup_s"] = round(time.monotonic() - t0, 1)
        procs["load"] = psutil.Process()
        cpu0 = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
        sched0 = {name: _schedstat(p.pid) for name, p in procs.items()}
        w0 = time.monotonic()
        self.measuring = True
        await asyncio.sleep(self.seconds)  # ok: the measured window
        self.measuring = False
        wall = time.monotonic() - w0
        for name, p in procs.items():
            self.stats[f"{name}_cpu_frac"] = round((sum(p.cpu_times()[:2]) - cpu0[name]) / wall, 2)
            self.stats[f"{name}_rss_mb"] = round(p.memory_info().rss / 2**20, 1)
            ran, waited = _busiest_thread(sched0[name], _schedstat(p.pid))
            self.stats[f"{name}_loop_runnable_frac"] = round((ran + waited) / 1e9 / wall, 2)
            self.stats[f"{name}_loop_cpu_wait_frac"] = round(waited / 1e9 / wall, 2)
        self.stats["loadavg_1m"] = round(os.getloadavg()[0], 1)
        self.stats["seconds"] = round(wall, 2)
        self.stats["store_requests_out_mean"] = round(sum(self.stats["store_ms"]) / 1000 / wall, 1)
        self.stopping = True
        for task in [feeder, *slots]:  # requests still out are not waited for (nor counted)
            task.cancel()
        await asyncio.gather(feeder, *slots, return_exceptions=True)
        await http.close()
        self.stats["error_kinds"] = self.error_kinds
        return self.stats


_JSON = {"Content-Type": "application/json"}


def _schedstat(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread of ``pid``: (ns on a CPU, ns runnable but waiting for one)."""
    out: dict[int, tuple[int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ran, waited, _ = f.read().split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(ran), int(waited))
    return out


def _busiest_thread(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(ns ran, ns waited) over the window of the thread that was runnable longest (the event loop)."""
    deltas = [(after[t][0] - before[t][0], after[t][1] - before[t][1]) for t in after.keys() & before.keys()]
    return max(deltas, key=sum, default=(0, 0))


def run_level(load: Load, servers: dict[str, int], out: Any) -> None:
    """A child process's body: settle it, :meth:`Load.run` (on uvloop if installed), put the result."""
    _settle_process()
    try:
        import uvloop
    except ImportError:
        out.put(asyncio.run(load.run(servers)))
    else:
        out.put(uvloop.run(load.run(servers)))
