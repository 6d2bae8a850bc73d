"""Benchmarks print only their JSON on stdout: banners, logs and child processes' output go to stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

SCRIPT = """
import subprocess, sys
from _stdout import emit_json, json_stdout
with json_stdout():
    print("LiteLLM banner")
    subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
    emit_json({"calls_per_s": 1})
"""


def test_only_the_json_line_reaches_stdout() -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=BENCHMARKS, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert [json.loads(line) for line in run.stdout.splitlines()] == [{"calls_per_s": 1}]
    assert "LiteLLM banner" in run.stderr and "a child process" in run.stderr


def test_every_benchmark_writes_its_result_through_emit_json() -> None:
    for script in BENCHMARKS.glob("[!_]*.py"):
        text = script.read_text()
        assert "with json_stdout():" in text and "emit_json(" in text, script.name
        assert "print(json.dumps" not in text, script.name
