"""Benchmarks print only their JSON on stdout: banners, logs and child processes' output go to stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("[!_]*.py")))
def test_every_benchmark_imports(script: str) -> None:
    """Each script's imports resolve (its ``main``, guarded by ``__name__``, does not run): a module
    moved in the package breaks the script that imports it here, not at its next measurement."""
    code = (
        f"import importlib.util; spec = importlib.util.spec_from_file_location('bench', {script!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))"
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=BENCHMARKS, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
