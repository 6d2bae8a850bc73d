"""Preflight never hangs (issue 34): a network check has a deadline and fails in one line naming
the URL, exit status 2, no traceback; against a closed port and a port that accepts and never answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agl_tinker.backend import BackendError
from agl_tinker.run.reach import Deadline, Unreachable, check_store, probe, within

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_of_a_closed_port_fails_at_once_naming_the_url(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    started = time.monotonic()
    with pytest.raises(Unreachable, match=f"Tinker at {url} refused the connection.*check X"):
        probe(url, Deadline(5.0), what="Tinker", hint="check X")
    assert time.monotonic() - started < 5.0


def test_probe_of_a_silent_port_gives_up_at_its_deadline(silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}"
    with pytest.raises(Unreachable, match=f"Tinker at {url} did not answer within 0.5 s; check X"):
        probe(url, Deadline(0.5), what="Tinker", hint="check X")


def test_within_bounds_a_blocking_call_and_passes_its_result_and_errors() -> None:
    assert within(lambda: 7, Deadline(1.0), failure="no") == 7
    with pytest.raises(Unreachable, match="too slow"):
        within(lambda: time.sleep(5), Deadline(0.2), failure="too slow")
    with pytest.raises(ZeroDivisionError):
        within(lambda: 1 / 0, Deadline(1.0), failure="no")
    assert issubclass(Unreachable, BackendError)  # the CLI's one-line, exit-2 errors


def test_store_check_names_the_store_url(closed_port: int) -> None:
    with pytest.raises(
        Unreachable, match=f"the store at http://127.0.0.1:{closed_port} refused.*agl-tinker store"
    ):
        check_store(f"http://127.0.0.1:{closed_port}")


def _cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "agl_tinker.cli", *argv],
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=90,  # it used to wait 300 s in silence
    )


def _one_line_exit_2(run: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], run.stderr


@pytest.mark.slow
def test_live_mode_with_a_silent_base_url_fails_in_one_line(silent_port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{silent_port}"
    run = _cli(
        "hello",
        "--log-path",
        str(tmp_path / "run"),
        AGL_TINKER_BACKEND="live",
        TINKER_BASE_URL=url,
        TINKER_API_KEY="tml-test",
    )
    _one_line_exit_2(run, f"Tinker at {url}")
    assert "TINKER_BASE_URL" in run.stderr


@pytest.mark.slow
def test_split_mode_with_a_silent_store_fails_in_one_line(silent_port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{silent_port}"
    run = _cli("hello", "runner", "--store", url)
    _one_line_exit_2(run, f"the store at {url} did not answer within 5 s")
