"""The README's lint command is the one ``tox -e lint`` runs.

The Development section once named a directory that does not exist (``examples``), so its lint
command failed with ``E902 No such file or directory`` before checking anything. ``tox.ini``'s
lint environment is the reference: the README's ``ruff`` commands must check the same paths.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = re.compile(r"ruff (check|format --check) ((?:[\w./-]+ ?)+)")


def _ruff_paths(text: str) -> dict[str, set[tuple[str, ...]]]:
    """Each ruff command in ``text`` (``check``, ``format --check``) -> the path lists it is given."""
    found: dict[str, set[tuple[str, ...]]] = {}
    for command, paths in RUFF.findall(text):
        found.setdefault(command, set()).add(tuple(p for p in paths.split() if p != "&&"))
    return found


def test_readme_lint_checks_what_tox_lint_checks() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    wanted = _ruff_paths(tox["testenv:lint"]["commands"])
    assert set(wanted) == {"check", "format --check"}
    readme = _ruff_paths((ROOT / "README.md").read_text(encoding="utf-8"))
    assert readme == wanted
    for paths in wanted.values():
        for path in next(iter(paths)):
            assert (ROOT / path).exists(), path
