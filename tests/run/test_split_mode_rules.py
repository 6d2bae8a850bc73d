"""Split mode's output rules without processes (issue 34): the store's one line per runner arriving
and leaving, the runner command's progress lines, its stop line, and the store watch."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time

import pytest
from agentlightning.execution.events import ThreadingEvent
from hypothesis import given
from hypothesis import strategies as st

from agl_tinker.net import free_port
from agl_tinker.runners.progress import ProgressPrinter
from agl_tinker.runners.split import RunnersStopped, StoreWatch
from agl_tinker.split_store import PresenceStoreServer, RunnerPresence


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_runner_is_said_once_when_it_connects_and_once_when_it_leaves() -> None:
    said: list[str] = []
    clock = _Clock()
    presence = RunnerPresence(leave_after_s=30, say=said.append, clock=clock)
    for t in (0, 1, 2, 25):
        clock.now = t
        presence.seen("Worker-0")
        presence.sweep()
    presence.seen(None)  # a call without a worker id (the algorithm's) is nobody
    clock.now = 54.9
    presence.sweep()
    assert presence.present == ["Worker-0"]
    clock.now = 55
    presence.sweep()
    presence.sweep()
    clock.now = 60
    presence.seen("Worker-0")  # back again (restarted): connects anew
    assert said == [
        "agl-tinker store: runner Worker-0 connected",
        "agl-tinker store: runner Worker-0 left (nothing heard from it for 30 s)",
        "agl-tinker store: runner Worker-0 connected",
    ]


@given(
    st.lists(st.tuples(st.sampled_from(["Worker-0", "Worker-1", "Worker-2"]), st.floats(0, 100)), max_size=40)
)
def test_arrivals_and_departures_alternate_per_runner(calls: list[tuple[str, float]]) -> None:
    said: list[str] = []
    clock = _Clock()
    presence = RunnerPresence(leave_after_s=10, say=said.append, clock=clock)
    for worker, gap in calls:
        clock.now += gap
        presence.sweep()
        presence.seen(worker)
    for worker in ("Worker-0", "Worker-1", "Worker-2"):
        events = [line.split()[4] for line in said if f" {worker} " in line]
        assert events == ["connected", "left"] * (len(events) // 2) + ["connected"] * (len(events) % 2)
        assert (worker in presence.present) == (len(events) % 2 == 1)


def test_a_presence_needs_a_positive_timeout() -> None:
    with pytest.raises(ValueError, match="leave_after_s must be > 0"):
        RunnerPresence(leave_after_s=0)


async def test_the_store_notes_the_worker_id_of_every_runner_call() -> None:
    from agentlightning.store.memory import InMemoryLightningStore

    seen: list[str] = []
    presence = RunnerPresence(say=seen.append)
    server = PresenceStoreServer(InMemoryLightningStore(), "127.0.0.1", free_port(), presence=presence)
    await server.update_worker("Worker-3")
    assert await server.dequeue_rollout(worker_id="Worker-4") is None
    assert await server.dequeue_many_rollouts(limit=2, worker_id="Worker-5") == []
    rollout = await server.enqueue_rollout({"x": 1})
    await server.start_attempt(rollout.rollout_id, worker_id="Worker-6")
    assert presence.present == ["Worker-3", "Worker-4", "Worker-5", "Worker-6"]


def test_progress_says_a_line_per_every_rollouts_and_totals_by_status() -> None:
    said: list[str] = []
    progress = ProgressPrinter("R", every=3, say=said.append)
    assert progress.total() == "no rollout finished"
    for status in ["succeeded", "failed", "succeeded", "timeout", "succeeded", "succeeded", "failed"]:
        progress.note("Worker-0", "ro-1", status)
    assert said == [
        "R: 3 rollouts finished (2 succeeded, 1 failed)",
        "R: 6 rollouts finished (4 succeeded, 1 failed, 1 timeout)",
    ]
    assert progress.total() == "7 rollouts finished (4 succeeded, 2 failed, 1 timeout)"


def test_verbose_progress_says_every_rollout() -> None:
    said: list[str] = []
    progress = ProgressPrinter("R", every=20, verbose=True, say=said.append)
    progress.note("Worker-1", "ro-9", "failed")
    assert said == ["R: Worker-1 rollout ro-9 failed"]
    assert progress.total() == "1 rollout finished (1 failed)"


def test_progress_reports_cross_processes_and_none_is_lost_at_stop() -> None:
    said: list[str] = []
    ctx = multiprocessing.get_context("fork")  # Linux; a spawned child would re-import this module
    progress = ProgressPrinter("R", every=2, say=said.append, ctx=ctx)
    progress.start()
    child = ctx.Process(target=_report_three, args=(progress.sender,))
    child.start()
    child.join(60)
    progress.stop()
    assert child.exitcode == 0
    assert said == ["R: 2 rollouts finished (2 succeeded)"]
    assert progress.total() == "3 rollouts finished (3 succeeded)"


def _report_three(sender: object) -> None:
    for i in range(3):
        sender("Worker-0", f"ro-{i}", "succeeded")  # type: ignore[operator]


def test_progress_needs_a_positive_every() -> None:
    with pytest.raises(ValueError, match="every must be >= 1"):
        ProgressPrinter("R", every=0)


def test_the_stop_line_names_the_reason_and_what_was_done() -> None:
    stopped = RunnersStopped("interrupted (Ctrl-C)", "2 rollouts finished (2 succeeded)", interrupted=True)
    assert stopped.line("R") == "R: stopped: interrupted (Ctrl-C); 2 rollouts finished (2 succeeded)"
    assert stopped.exit_code == 130
    assert RunnersStopped("the store at u stopped answering", "no rollout finished").exit_code == 1


def test_the_store_watch_stops_the_runners_when_nothing_answers() -> None:
    stop = ThreadingEvent()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    watch = StoreWatch(url, stop, gone_after_s=0.3, every_s=0.05)
    start = time.monotonic()
    watch.start()
    assert stop.wait(10)
    watch.stop()
    assert time.monotonic() - start < 5
    assert watch.reason == f"the store at {url} stopped answering (nothing for 0.3 s)"


def test_the_store_watch_leaves_a_store_that_answers_alone() -> None:
    from aiohttp import web

    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def serve() -> None:
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/v1/agl/health", health)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)
    stop = ThreadingEvent()
    watch = StoreWatch(f"http://127.0.0.1:{port}", stop, gone_after_s=0.3, every_s=0.05)
    watch.start()
    time.sleep(1.0)
    watch.stop()
    loop.call_soon_threadsafe(loop.stop)
    assert not stop.is_set() and watch.reason is None


async def test_the_store_serves_on_when_its_own_health_probe_cannot_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a loaded machine did in CI: Agent-lightning's launcher probed the store's health from
    its own start, gave up after its startup window ("Server is not healthy ... after 60.0 s"),
    shut the answering store down, and the process then outlived its SIGINT. Here the probe can
    never pass (it asks an address nothing listens on) and the window is short: the store must
    serve on regardless, and stop when cancelled (as Ctrl-C does)."""
    import urllib.request

    import agl_tinker.split_store as split_store

    launcher_args = split_store.PythonServerLauncherArgs

    def unreachable_probe(**kwargs: object) -> object:
        return launcher_args(**{**kwargs, "access_host": "127.0.0.2", "startup_timeout": 0.5})  # type: ignore[arg-type]

    monkeypatch.setattr(split_store, "PythonServerLauncherArgs", unreachable_probe)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/agl/health"
    serving = asyncio.create_task(
        split_store.serve_store("127.0.0.1", port, presence=RunnerPresence(say=print))
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # up: the port answers
            try:
                status = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=1).status)
                break
            except OSError:
                assert not serving.done(), serving
                assert time.monotonic() < deadline, "the store never answered"
                await asyncio.sleep(0.05)
        assert status == 200
        await asyncio.sleep(1.5)  # well past the launcher's 0.5 s window
        assert not serving.done(), serving.exception()
        assert await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).status) == 200
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, 30)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=1)
