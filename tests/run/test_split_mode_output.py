"""Split mode (issue 34): the store is quiet by default (its URL, errors; no uvicorn INFO lines, no
Agent-lightning launcher warning)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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
