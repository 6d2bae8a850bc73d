"""Ray is an optional extra: only the Ray runner modules import it (:mod:`~agl_tinker.runners.ray_cluster`
when a run connects, :mod:`~agl_tinker.runners.ray_actor` inside an actor), so every other path
works without it installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY_MODULES = {ROOT / "agl_tinker" / "runners" / name for name in ("ray_cluster.py", "ray_actor.py")}


def _imports_ray(path: Path) -> list[int]:
    """Lines of ``path`` that import ``ray`` (or a submodule of it)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names)) or (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray" and not node.level
        ):
            lines.append(node.lineno)
    return lines


def test_no_module_but_the_ray_runner_modules_imports_ray() -> None:
    offenders = {
        str(p.relative_to(ROOT)): _imports_ray(p)
        for package in ("agl_tinker", "fakes")
        for p in (ROOT / package).rglob("*.py")
        if p not in RAY_MODULES and _imports_ray(p)
    }
    assert offenders == {}
    assert all(_imports_ray(p) for p in RAY_MODULES), "the Ray modules must still be where Ray is imported"


@pytest.mark.slow
def test_importing_the_ray_runners_does_not_import_ray() -> None:
    """Ray is imported when a run connects to a cluster, not when the strategy is imported."""
    code = (
        "import sys; from agl_tinker.heavy_import import import_agentlightning; import_agentlightning();"
        "import agl_tinker.runners.ray_runners, agl_tinker.cli;"
        "print('ray' in sys.modules)"
    )
    env_path = f"{ROOT}"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PYTHONPATH": env_path,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "HF_HUB_OFFLINE": "1",
            "PATH": "",
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
