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
from reliability_harness import InLoopRunners, hello, hello_config

from agl_tinker.train import StoreLost, train
from examples.hello.agent import hello_dataset
from fakes.tinker import ServiceClient

AGL_TINKER = str(Path(sys.executable).with_name("agl-tinker"))
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
NOTICE_S = 45.0
"""Upper bound from the kill to the error (measured: a few seconds; CI machines are slow)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StoreProcess:
    """``agl-tinker store`` on a fixed port, which can be killed and started again there."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [AGL_TINKER, "store", "--port", str(self.port)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None, "agl-tinker store exited"
            assert time.monotonic() < deadline, "agl-tinker store did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def store_process() -> Iterator[StoreProcess]:
    store = StoreProcess(_free_port())
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
    killed_at = 0.0
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
            await asyncio.wait_for(first_step.wait(), 120)
            await asyncio.sleep(0.3)  # somewhere inside the next step
            store.kill()
            killed_at = time.perf_counter()
            if restart:
                await asyncio.to_thread(store.start)
            with pytest.raises(StoreLost) as caught:
                await asyncio.wait_for(run, NOTICE_S + 60)
            return caught.value, time.perf_counter() - killed_at
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
