"""The Ray runners' settings, cluster probe and runner parts, without a cluster (fast)."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.execution.base import ExecutionStrategy

from agl_tinker.algorithm import fast_runner
from agl_tinker.examples.hello.agent import hello_agent
from agl_tinker.runners.deadline import DeadlineRunner
from agl_tinker.runners.ray_cluster import ClusterUnreachable, RayRunnerSettings, probe
from agl_tinker.runners.ray_runners import runner_parts

ROOT = Path(__file__).resolve().parents[2]


def test_a_runner_s_resources_are_shared_by_its_concurrent_rollouts() -> None:
    settings = RayRunnerSettings(n_runners=3, num_cpus=2, resources={"browser": 1}, rollouts_per_runner=4)
    assert settings.n_actors == 12
    assert settings.actor_options() == {"num_cpus": 0.5, "max_restarts": 0, "resources": {"browser": 0.25}}


@pytest.mark.parametrize(
    "bad",
    [
        {"n_runners": 0},
        {"rollouts_per_runner": 0},
        {"num_cpus": -1},
        {"resources": {"gpu": -1}},
        {"max_restarts": -1},
    ],
)
def test_unusable_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RayRunnerSettings(**bad)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_probe_fails_fast_where_nothing_listens() -> None:
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable, match="did not answer"):
        probe(f"127.0.0.1:{_closed_port()}", timeout_s=5.0)
    assert time.monotonic() - started < 2.0


@pytest.fixture
def not_a_gcs() -> Iterator[str]:
    """A TCP server that accepts connections and answers HTTP/1 nonsense (as a proxy might)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_a_tcp_server_that_is_not_a_ray_gcs_is_unreachable_too(not_a_gcs: str) -> None:
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable, match="no Ray GCS there"):
        probe(not_a_gcs, timeout_s=2.0)
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("address", ["nonsense", "host:", ":6379"])
def test_a_malformed_address_is_named(address: str) -> None:
    with pytest.raises(ClusterUnreachable, match="expected host:port"):
        probe(address)


class _Capture(ExecutionStrategy):
    """Keeps the runner bundle ``Trainer.fit`` hands its strategy, runs nothing."""

    bundle: Any = None

    def execute(self, algorithm: Any, runner: Any, store: Any) -> None:
        type(self).bundle = runner


def test_the_trainer_s_runner_bundle_becomes_parts_an_actor_can_unpickle() -> None:
    runner = fast_runner()
    agl.Trainer(runner=runner, strategy=_Capture(), n_runners=1).fit(hello_agent)
    parts = runner_parts(_Capture.bundle)
    assert parts.runner is runner
    assert type(parts.agent) is type(hello_agent) and parts.agent is not hello_agent  # a detached copy
    shipped = pickle.loads(pickle.dumps(parts))  # Ray pickles the same way (cloudpickle)
    assert isinstance(shipped.runner, DeadlineRunner)
    assert type(shipped.agent) is type(hello_agent)


def test_a_bundle_that_is_not_a_trainer_s_is_refused() -> None:
    async def bundle(store: Any, worker_id: int, event: Any) -> None: ...

    with pytest.raises(TypeError, match=r"agl\.Trainer"):
        runner_parts(bundle)


def test_the_command_line_reports_an_unreachable_cluster_in_one_line_within_5_s() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agl_tinker.cli",
            "hello",
            "--ci",
            "runners=ray",
            f"ray_address=127.0.0.1:{_closed_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().count("\n") == 0 and "did not answer" in done.stderr
    assert elapsed < 5.0 or pytest.fail(f"took {elapsed:.1f}s")
