"""Split mode (issue 34), with real processes: the store is quiet by default (its URL, one line per
runner connecting and leaving, errors; no uvicorn INFO lines, no Agent-lightning launcher warning);
a runner command says that it connected, a line per N rollouts finished, and why it stopped."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import agentlightning as agl
import pytest
from agentlightning.store.client_server import LightningStoreClient
from aiohttp import web

from agl_tinker.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def _stopped(store: subprocess.Popen[str]) -> tuple[str, str]:
    """The store's output once it has exited; if it has not within 60 s of SIGINT, fail with the
    stacks of its threads (SIGABRT makes the faulthandler print them)."""
    try:
        return store.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        store.send_signal(signal.SIGABRT)
        out, err = store.communicate(timeout=30)
        pytest.fail(f"the store did not exit within 60 s of SIGINT\n{out}\n{err[-6000:]}")


@pytest.mark.slow
def test_the_store_says_its_url_and_nothing_else_by_default() -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "PYTHONFAULTHANDLER": "1",  # a store that hangs on SIGINT is aborted below: its stacks say where
    }
    store = subprocess.Popen(
        [sys.executable, "-m", "agl_tinker.cli", "store", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/agl/health", timeout=1) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "the store never answered"
                time.sleep(0.2)
    finally:
        store.send_signal(signal.SIGINT)
        out, err = _stopped(store)
    assert out.strip().splitlines() == [
        f"agl-tinker store: serving at http://127.0.0.1:{port}",
        "agl-tinker store: stopped",
    ], out
    assert err.strip() == "", err


# -- runners coming and going, runner progress and stop reasons (real processes) ----------------


class _Output:
    """A process's stdout lines as they come (a reader thread), with a wait for a wanted line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, wanted: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(wanted in line for line in self.lines):
            assert time.monotonic() < deadline, f"no line with {wanted!r} in {self.lines}"
            assert self.process.poll() is None or self._thread.is_alive(), f"exited: {self.lines}"
            time.sleep(0.1)

    def finish(self, timeout: float = 60) -> tuple[int, list[str]]:
        code = self.process.wait(timeout)
        self._thread.join(5)
        return code, self.lines


def _start(*args: str) -> _Output:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "agl_tinker.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return _Output(process)


class _ChatServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that always claims the asked-for identity."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        assert self._ready.wait(30)

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        said = body["messages"][-1]["content"].removeprefix("Say you are ")
        choice = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": f"I am {said}"},
        }
        return web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
            }
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()


async def _feed(store_url: str, llm_url: str, n: int) -> None:
    store = LightningStoreClient(store_url)
    try:
        await store.add_resources({"llm": agl.LLM(endpoint=llm_url, model="m")})
        for i in range(n):
            await store.enqueue_rollout({"identity": str(i)})
    finally:
        await store.close()


def _events(store_lines: list[str], worker: str) -> list[str]:
    """What the store said of ``worker``, in order: ``connected`` / ``left``."""
    return [line.split()[4] for line in store_lines if f"runner {worker} " in line]


def _until(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow
def test_store_says_which_runners_come_and_go_and_runners_say_what_they_do_and_why_they_stop() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[_Output] = []

    def start(*args: str) -> _Output:
        started.append(_start(*args))
        return started[-1]

    try:
        store = start("store", "--port", str(port), "--runner-timeout", "4")
        store.wait_for("serving at")
        chat = _ChatServer()
        first = start("hello", "runner", "--store", url, "report_every=4")
        first.wait_for("connected to the store")
        store.wait_for("runner Worker-1 connected")
        asyncio.run(_feed(url, f"http://127.0.0.1:{chat.port}/v1", 8))
        first.wait_for("8 rollouts finished")
        first.process.send_signal(signal.SIGINT)
        first_code, first_lines = first.finish()
        gone = ("Worker-0", "Worker-1")
        _until(lambda: all(_events(store.lines, w)[-1:] == ["left"] for w in gone), f"left: {store.lines}")
        second = start("hello", "runner", "--store", url, "n_runners=1")
        second.wait_for("connected to the store")
        _until(lambda: _events(store.lines, "Worker-0")[-1:] == ["connected"], f"back: {store.lines}")
        store.process.send_signal(signal.SIGINT)
        store_code, store_lines = store.finish()
        second_code, second_lines = second.finish()
    finally:
        for output in started:
            if output.process.poll() is None:
                output.process.kill()
    assert first_code == 130 and first_lines == [
        f"Hello 1024 runners: connected to the store at {url}; 2 runner processes",
        "Hello 1024 runners: 4 rollouts finished (4 succeeded)",
        "Hello 1024 runners: 8 rollouts finished (8 succeeded)",
        "Hello 1024 runners: stopped: interrupted (Ctrl-C); 8 rollouts finished (8 succeeded)",
    ], first_lines
    assert second_code == 1 and second_lines == [
        f"Hello 1024 runners: connected to the store at {url}; 1 runner process",
        f"Hello 1024 runners: stopped: the store at {url} stopped answering (nothing for 5 s); no rollout finished",
    ], second_lines
    # One line per runner connecting and leaving (a runner silent for 4 s while busy on a loaded machine
    # may leave and come back in between); the second command's Worker-0 connects anew.
    assert store_code == 0 and store_lines[0] == f"agl-tinker store: serving at {url}", store_lines
    assert store_lines[-1] == "agl-tinker store: stopped", store_lines
    assert all(line.startswith("agl-tinker store: runner Worker-") for line in store_lines[1:-1]), store_lines
    for worker, last in (("Worker-0", "connected"), ("Worker-1", "left")):
        events = _events(store_lines, worker)
        assert events == ["connected", "left"] * (len(events) // 2) + ["connected"] * (len(events) % 2)
        assert events[-1] == last, store_lines
    left = next(line for line in store_lines if " left " in line)
    silent = re.fullmatch(
        r"agl-tinker store: runner Worker-\d left \(nothing heard from it for (\d+) s\)", left
    )
    assert silent is not None and int(silent[1]) >= 4, left
