"""The venvs are ignored however they exist: as directories, or as symlinks to a shared venv.

``.venv/`` (with the slash) matches only a directory, so a ``.venv`` symlink (a worktree using
another checkout's venv) was not ignored: ``git add -A`` committed it, and a clone that pulled the
commit had its own venv replaced by the symlink (git overwrites ignored files), so its next
bootstrap installed the clone's code into the venv the link points to.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [".venv", ".venv-py313"])
def test_a_venv_is_ignored_as_a_directory_and_as_a_symlink(name: str) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    # Without a trailing slash git takes the path for a file, as it does a symlink; a pattern that
    # matches it matches a directory of that name too.
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", name], cwd=ROOT, capture_output=True, timeout=30
    )
    assert done.returncode == 0, f"{name} is not ignored: {done.stderr!r}"
