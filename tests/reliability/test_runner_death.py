"""A runner process killed mid-rollout is reported and replaced, and its rollout ends at once.

Agent-lightning's launcher never looked at its runner processes until shutdown: a killed runner
left the run short of a runner, unreported, and its rollout waited out the whole rollout timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_a_killed_runner_is_reported_replaced_and_its_rollout_given_up(tmp_path: Path) -> None:
    log_path = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "scenarios.py"), "kill_runner", "--log-path", str(log_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        victim = _wait_for(log_path / "victim", proc, timeout_s=240)
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=240)  # the rollout timeout is an hour
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-4000:]
    assert f"(pid {victim}) died with exit code -9" in err
    assert "replaced by a new process" in err and "marked unresponsive" in err
    steps = json.loads(out.strip().splitlines()[-1])["steps"]
    assert len(steps) == 2 and all(step["train/datums"] > 0 for step in steps)
    assert sum(step.get("excluded/timeout", 0) for step in steps) == 1, steps  # the killed one
    assert sum(step["runners/restarts"] for step in steps) == 1, steps  # counted in the metrics


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout_s: float) -> int:
    """The pid written to ``path`` once the scenario writes it (it is started, not polled for results)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and (text := path.read_text().strip()):
            return int(text)
        time.sleep(0.2)  # waiting on another process's file: no event to wait on
    raise AssertionError(f"the scenario never wrote {path} (exit code {proc.poll()})")
