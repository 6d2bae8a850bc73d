"""Split mode, the ``agl-tinker store`` process killed (and restarted on its port): the algorithm
notices within seconds and stops with :class:`StoreLost`; it never hangs, closing included."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentlightning.store.client_server import LightningStoreClient
from reliability_harness import InLoopRunners, hello, hello_config, memory_store

from agl_tinker.examples.hello.agent import hello_dataset
from agl_tinker.loop.errors import StoreLost
from agl_tinker.loop.train import train
from agl_tinker.store_server import LeanStoreServer
from fakes.tinker import ServiceClient

AGL_TINKER = str(Path(sys.executable).with_name("agl-tinker"))
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
NOTICE_S = 45.0
"""Upper bound from the kill to the error (measured: a few seconds; CI machines are slow)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The store a restart brings up: imported ahead (imports take most of a store's start-up time),
# serving on the port once the trigger file appears, as `agl-tinker store --port` does.
_ARMED_STORE = """
import asyncio, os, sys, time
from agentlightning.store.memory import InMemoryLightningStore
from agl_tinker.store_server import LeanStoreServer
port, trigger = int(sys.argv[1]), sys.argv[2]
server = LeanStoreServer(
    InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=port, launch_mode="asyncio"
)
while not os.path.exists(trigger):
    time.sleep(0.02)
asyncio.run(server.run_forever())
"""


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, "the store process exited"
        assert time.monotonic() < deadline, "the store did not start"
        time.sleep(0.05)


class StoreProcess:
    """``agl-tinker store`` on a fixed port, which can be killed and replaced there at once."""

    def __init__(self, port: int, trigger: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.trigger = trigger
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        _wait_for_port(self.port, self._spawn([AGL_TINKER, "store", "--port", str(self.port)]))

    def arm_replacement(self) -> subprocess.Popen[bytes]:
        """A second store process, imported and waiting to bind the port on :meth:`replace`."""
        return self._spawn([sys.executable, "-c", _ARMED_STORE, str(self.port), str(self.trigger)])

    def kill(self) -> None:
        self.procs[0].send_signal(signal.SIGKILL)
        self.procs[0].wait(timeout=30)

    def replace(self, replacement: subprocess.Popen[bytes]) -> None:
        self.trigger.touch()
        _wait_for_port(self.port, replacement)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture
def store_process(tmp_path: Path) -> Iterator[StoreProcess]:
    store = StoreProcess(_free_port(), tmp_path / "bind-now")
    store.start()
    try:
        yield store
    finally:
        store.stop()


async def _train_until_killed(
    store: StoreProcess, tmp_path: Path, restart: bool
) -> tuple[BaseException, float]:
    """Train against ``store`` (in-loop runners); kill it after the first step; the error and how
    long after the kill it came."""
    algo_client, runner_client = LightningStoreClient(store.url), LightningStoreClient(store.url)
    config = hello_config(tmp_path / "run", max_steps=200, save_every=1)
    first_step = asyncio.Event()
    service = ServiceClient(root_dir=str(tmp_path / "sim"))
    replacement = store.arm_replacement() if restart else None
    killed_at = ended_at = 0.0

    def ended(task: object) -> None:
        nonlocal ended_at
        ended_at = time.perf_counter()

    try:
        async with InLoopRunners(runner_client, hello, n=2):
            run = asyncio.create_task(
                train(
                    config,
                    algo_client,
                    hello_dataset("train"),
                    required_fields=("identity",),
                    service=service,
                    show_progress=False,
                    on_step=lambda step, metrics: first_step.set(),
                )
            )
            run.add_done_callback(ended)
            await asyncio.wait_for(first_step.wait(), 120)
            await asyncio.sleep(0.3)  # somewhere inside the next step
            store.kill()
            killed_at = time.perf_counter()
            if replacement is not None:
                # On a loaded machine the replacement may come up after the run gave up on the dead
                # store; either way it must stop (the in-process test below pins the restart path).
                await asyncio.to_thread(store.replace, replacement)
            with pytest.raises(StoreLost) as caught:
                await asyncio.wait_for(run, NOTICE_S + 60)
            return caught.value, ended_at - killed_at
    finally:
        await algo_client.close()
        await runner_client.close()


@pytest.mark.slow
@pytest.mark.parametrize("restart", [False, True], ids=["killed", "killed-and-restarted"])
async def test_the_algorithm_stops_with_a_clear_error_when_the_store_dies(
    store_process: StoreProcess, tmp_path: Path, restart: bool
) -> None:
    error, noticed_s = await _train_until_killed(store_process, tmp_path, restart)
    assert noticed_s < NOTICE_S, noticed_s
    message = str(error)
    assert "lost the LightningStore during step" in message and "resume" in message, message
    # what was trained before the loss is checkpointed: a restart resumes there
    assert (tmp_path / "run" / "checkpoints.jsonl").read_text().strip()


@pytest.mark.slow
async def test_a_store_restarted_on_its_port_is_noticed_as_lost(tmp_path: Path) -> None:
    """The same port answers again at once, from a fresh store that knows neither the rollouts in
    flight nor the run's resources (in process, so the restart is quicker than any give-up)."""
    port = _free_port()
    server = LeanStoreServer(memory_store(), host="127.0.0.1", port=port)
    await server.start()
    url = f"http://127.0.0.1:{port}"
    algo_client, runner_client = LightningStoreClient(url), LightningStoreClient(url)
    config = hello_config(tmp_path / "run", max_steps=200)
    first_step = asyncio.Event()
    try:
        async with InLoopRunners(runner_client, hello, n=2):
            run = asyncio.create_task(
                train(
                    config,
                    algo_client,
                    hello_dataset("train"),
                    required_fields=("identity",),
                    service=ServiceClient(root_dir=str(tmp_path / "sim")),
                    show_progress=False,
                    on_step=lambda step, metrics: first_step.set(),
                )
            )
            await asyncio.wait_for(first_step.wait(), 120)
            await server.stop()
            server = LeanStoreServer(memory_store(), host="127.0.0.1", port=port)
            await server.start()
            restarted = time.perf_counter()
            with pytest.raises(StoreLost, match="lost the LightningStore during step"):
                await asyncio.wait_for(run, NOTICE_S + 60)
            assert time.perf_counter() - restarted < NOTICE_S
    finally:
        await algo_client.close()
        await runner_client.close()
        await server.stop()
