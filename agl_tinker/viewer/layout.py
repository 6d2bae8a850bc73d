"""Where transcripts live under a log path and which row keys are details: shared by the writer
and the viewer's reader, with no heavy import (the viewer starts without torch or tinker)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DETAIL_KEYS", "TRANSCRIPTS_DIR", "transcript_file"]

TRANSCRIPTS_DIR = "transcripts"

DETAIL_KEYS = ("calls", "drift_reports", "gap_reports", "reward_events", "skipped_calls", "token_text")
"""Keys of a detailed row beyond its summary."""


def transcript_file(log_path: str | Path, step: int, policy: str | None = None) -> Path:
    """Where the transcripts of ``step`` (of ``policy``, in a several-policy run) are written."""
    name = f"step_{step:06d}.jsonl" if not policy else f"step_{step:06d}.{policy}.jsonl"
    return Path(log_path) / TRANSCRIPTS_DIR / name
