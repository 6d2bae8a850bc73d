"""What a run keeps under its ``log_path``, by name, and the one refusal those names decide alone.

The names are decided here, in a module that imports nothing heavy, so that the checks a command
makes before anything starts (:mod:`agl_tinker.run.claim`) read the same files the training loop
writes without importing the cookbook's checkpoint module (which imports torch: about 5 s here).
The two file names are the cookbook's (``ml_log``'s metrics file, ``checkpoint_utils``'
``CHECKPOINTS_BASE_NAME``); a test keeps them equal.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CHECKPOINT_INDEX",
    "METRICS_FILE",
    "POLICIES_DIR",
    "has_metrics",
    "index_dirs",
    "missing_index_message",
    "policy_dir",
]

METRICS_FILE = "metrics.jsonl"
"""One JSON row per step, written by the cookbook's ``ml_log``."""

CHECKPOINT_INDEX = "checkpoints.jsonl"
"""The cookbook's ``checkpoint_utils.CHECKPOINTS_BASE_NAME``."""

POLICIES_DIR = "policies"
"""``log_path/policies/<name>/`` holds a policy's checkpoint index and reward curve (several policies)."""


def policy_dir(log_path: str | os.PathLike[str], name: str) -> Path:
    """Where policy ``name`` of a several-policy run keeps its checkpoint index and reward curve."""
    return Path(log_path) / POLICIES_DIR / name


def index_dirs(log_path: str | os.PathLike[str], policies: Sequence[str] = ()) -> list[Path]:
    """The directories holding a run's checkpoint indexes: one per policy of a several-policy run
    (``policies``: their names), else ``log_path`` itself."""
    return [policy_dir(log_path, name) for name in policies] or [Path(log_path)]


def has_metrics(log_path: str | os.PathLike[str]) -> bool:
    """``log_path`` holds metrics rows of an earlier run (a non-blank line of :data:`METRICS_FILE`):
    the run there cannot start over from step 0 without its checkpoint, or ``fresh_start``."""
    path = Path(log_path) / METRICS_FILE
    return path.exists() and any(line.strip() for line in path.read_text(errors="replace").splitlines())


def missing_index_message(log_path: str | os.PathLike[str], policies: Sequence[str] = ()) -> str | None:
    """Why ``log_path`` cannot be resumed when it holds metrics rows but no checkpoint index (a run
    whose checkpoints are gone would restart from step 0 with fresh weights and mix two runs'
    metrics); ``None`` otherwise.

    ``policies``: a several-policy run's names; each keeps its index in :func:`policy_dir`, and
    the run can resume when any of them has one (the metrics rows are the run's, in ``log_path``).
    """
    log_path = Path(log_path)
    metrics = log_path / METRICS_FILE
    indexes = [d / CHECKPOINT_INDEX for d in index_dirs(log_path, policies)]
    if any(i.exists() for i in indexes) or not has_metrics(log_path):
        return None
    index = indexes[0] if len(indexes) == 1 else log_path / POLICIES_DIR / "*" / CHECKPOINT_INDEX
    return (
        f"{metrics} holds metrics of an earlier run but {index} is missing, so it cannot be "
        "resumed; restore the checkpoint index, use another log_path, or set fresh_start=True "
        "to start over (the old files are kept, renamed aside)"
    )
