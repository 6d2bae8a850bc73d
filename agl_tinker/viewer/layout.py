"""Where transcripts live under a log path and which row keys are details: shared by the writer
and the viewer's reader, with no heavy import (the viewer starts without torch or tinker)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DETAIL_KEYS", "KINDS", "POLICY_NAME", "TRANSCRIPTS_DIR", "transcript_file"]

TRANSCRIPTS_DIR = "transcripts"

KINDS = ("step", "eval")
"""``step``: a training step's rollouts; ``eval``: the validation rollouts run before step N (``eval_NNNNNN``)."""

POLICY_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
"""A policy name as a transcript file name carries it (``step_NNNNNN.<policy>.jsonl``)."""

DETAIL_KEYS = ("calls", "drift_reports", "gap_reports", "reward_events", "skipped_calls", "token_text")
"""Keys of a detailed row beyond its summary."""


def transcript_file(log_path: str | Path, step: int, policy: str | None = None, kind: str = "step") -> Path:
    """Where the transcripts of ``step`` (of ``policy``, in a several-policy run) are written.

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name = f"{kind}_{step:06d}.jsonl" if not policy else f"{kind}_{step:06d}.{policy}.jsonl"
    return Path(log_path) / TRANSCRIPTS_DIR / name
