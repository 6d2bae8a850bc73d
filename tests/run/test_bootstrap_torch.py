"""``scripts/bootstrap.sh`` on a Python without a CPU build of torch at hand (issue 34): with
``AGL_TINKER_TORCH=cpu`` it stops in one line (exit 3) instead of downloading the 4.6 GB CUDA
build, and it builds its venv where ``AGL_TINKER_VENV`` says, never in the repository's ``.venv``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agl_tinker.net import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cpu_only_bootstrap_refuses_the_cuda_build_in_one_line(tmp_path: Path) -> None:
    venv, wheels = tmp_path / "venv", tmp_path / "no-wheels"
    wheels.mkdir()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "AGL_TINKER_VENV": str(venv),
        "AGL_TINKER_TORCH": "cpu",
        "AGL_TINKER_TORCH_INDEX": f"http://127.0.0.1:{free_port()}/whl/cpu",  # nothing listens there
        "PIP_FIND_LINKS": str(wheels),  # no local torch wheel either
        "PIP_CONSTRAINT": "",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bootstrap.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    said = [line for line in done.stderr.splitlines() if line.startswith("bootstrap:")]
    assert done.returncode == 3, done.stderr
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert said == [
        f"bootstrap: no CPU build of torch==2.13.0 for Python {py} at hand "
        f"({env['AGL_TINKER_TORCH_INDEX']} unreachable, none in the local wheels); "
        "AGL_TINKER_TORCH=cpu refuses the CUDA build"
    ], done.stderr
    assert (venv / "bin" / "python").exists() and not (venv / ".agl-tinker-installed").exists()
    assert not list(Path(venv).glob("lib/python*/site-packages/torch"))
