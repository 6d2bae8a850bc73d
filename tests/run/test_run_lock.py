"""One run per log path (issue 34): a second process on a held ``log_path`` fails at once, in one
line naming the path and the holder's pid; a SIGKILLed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agl_tinker.loop.config import ConfigError
from agl_tinker.run import lock

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}

HOLD = """
import sys, time
from agl_tinker.run import lock
lock.claim(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def _holder(log_path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(log_path)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agl_tinker.cli", *argv], env=ENV, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_a_second_run_on_a_held_log_path_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    log_path = tmp_path / "run"
    holder = _holder(log_path)
    try:
        started = time.monotonic()
        run = _cli("hello", "--log-path", str(log_path), "--steps", "1")
        elapsed = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert str(log_path) in lines[0] and f"pid {holder.pid}" in lines[0] and "another run" in lines[0]
    assert "Traceback" not in run.stderr and not (log_path / "metrics.jsonl").exists()
    assert elapsed < 60  # no store, server or runner started (it is the import time, under load)


def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    with pytest.raises(lock.LogPathInUse, match=f"pid {holder.pid}"):
        lock.claim(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock.claim(tmp_path)  # the kernel dropped the dead process's lock
    try:
        assert lock.holds(tmp_path)
    finally:
        lock.release(tmp_path)
    assert not lock.holds(tmp_path)


def test_the_lock_is_reentrant_in_one_process_and_released_for_others(tmp_path: Path) -> None:
    lock.claim(tmp_path)
    lock.claim(tmp_path)  # the CLI, TinkerAlgorithm and train() each claim it
    lock.release(tmp_path)
    assert lock.holds(tmp_path)  # claims are counted: the outer one still holds it
    lock.release(tmp_path)
    assert not lock.holds(tmp_path)
    lock.release(tmp_path)  # releasing a lock not held does nothing
    assert isinstance(lock.LogPathInUse("x"), ConfigError)  # a setup error: one line, exit status 2
    holder = _holder(tmp_path)  # another process can take it now
    holder.kill()
    holder.wait()


def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    lock.claim(tmp_path)
    pid = os.fork()
    if pid == 0:  # the child: runner processes are forked from the training process
        os._exit(0 if not lock.holds(tmp_path) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lock.release(tmp_path)
    holder = _holder(tmp_path)
    holder.kill()
    holder.wait()
