"""Packaging: ``scripts/bootstrap.sh``'s editable install builds without warnings (issue 16).

setuptools builds a flat-layout project's editable wheel with a meta path finder and then always
emits ``InformationOnly: Editable installation`` (pip shows it as a build backend warning).
``[tool.setuptools] package-dir`` in ``pyproject.toml`` selects the plain ``.pth`` strategy instead;
the regular wheel must hold the same files either way.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = """
import sys, warnings
from setuptools import build_meta
from setuptools.warnings import SetuptoolsWarning
warnings.simplefilter("error", SetuptoolsWarning)
print(getattr(build_meta, sys.argv[1])(sys.argv[2]))
"""


def _copy_project(dest: Path) -> Path:
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("agl_tinker", "fakes"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    return dest


def _build(project: Path, hook: str, out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-c", BUILD, hook, str(out)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_editable_build_emits_no_setuptools_warning_and_the_wheel_keeps_its_packages(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    editable = _build(project, "build_editable", tmp_path / "editable")
    with zipfile.ZipFile(editable) as whl:
        pth = [n for n in whl.namelist() if n.endswith(".pth")]
        assert len(pth) == 1
        assert whl.read(pth[0]).decode().strip() == str(project)
    wheel = _build(project, "build_wheel", tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as whl:
        tops = {n.split("/")[0] for n in whl.namelist() if not n.split("/")[0].endswith(".dist-info")}
        names = set(whl.namelist())
    assert tops == {"agl_tinker", "fakes"}
    assert "agl_tinker/examples/q20/data/q20.csv" in names
    assert "fakes/tinker/data/prior.json" in names
