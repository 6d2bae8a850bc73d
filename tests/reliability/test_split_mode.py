"""Split mode under faults: a runner process killed by SIGKILL is replaced by its launcher, and
the algorithm process exits cleanly (no ``Unclosed client session`` / ``Unclosed connector``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "agl_tinker.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_split_mode_replaces_a_killed_runner_and_the_algorithm_exits_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    url = f"http://127.0.0.1:{_free_port()}"
    log_path = tmp_path / "run"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    store = subprocess.Popen([*CLI, "store", "--port", url.rsplit(":", 1)[1]], **pipes)  # type: ignore[call-overload]
    _wait_for_health(url, store)  # as a user does: the runner and algorithm commands check the store at once
    runners = subprocess.Popen([*CLI, "hello", "runner", "--store", url, "--n-runners", "2"], **pipes)  # type: ignore[call-overload]
    algo = subprocess.Popen(
        [*CLI, "hello", "algo", "--ci", "--store", url, "--log-path", str(log_path)], **pipes
    )  # type: ignore[call-overload]
    try:
        victim = _runner_child_once_training(runners, algo, log_path / "metrics.jsonl", timeout_s=300)
        os.kill(victim, signal.SIGKILL)
        _, algo_err = algo.communicate(timeout=300)
        assert algo.returncode == 0, algo_err[-4000:]
        runners.send_signal(signal.SIGINT)
        _, runners_err = runners.communicate(timeout=60)
    finally:
        for proc in (algo, runners, store):
            proc.kill()
            proc.wait()
    assert "Unclosed client session" not in algo_err and "Unclosed connector" not in algo_err, algo_err[
        -4000:
    ]
    assert f"(pid {victim}) died with exit code -9" in runners_err, runners_err[-4000:]
    assert "replaced by a new process" in runners_err


def _wait_for_health(url: str, store: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/agl/health", timeout=1):
                return
        except OSError:
            assert store.poll() is None and time.monotonic() < deadline, "the store did not start"
            time.sleep(0.2)  # waiting on another process's start-up: no event to wait on


def _runner_child_once_training(
    launcher: subprocess.Popen[str], algo: subprocess.Popen[str], metrics: Path, timeout_s: float
) -> int:
    """A runner process of ``launcher``, once the algorithm has logged its first step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and algo.poll() is None:
        if metrics.exists() and metrics.read_text().strip():
            children = psutil.Process(launcher.pid).children()
            if children:
                return int(children[0].pid)
        time.sleep(0.2)  # waiting on other processes' progress: no event to wait on
    raise AssertionError(f"the algorithm never logged a step (exit code {algo.poll()})")
