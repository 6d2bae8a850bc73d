"""Per-step transcript files under a run's log path: :class:`TranscriptWriter`.

Layout (what ``agl-tinker view`` reads)::

    <log_path>/transcripts/step_000012.jsonl            one row per rollout of step 12
    <log_path>/transcripts/step_000012.<policy>.jsonl   several-policy runs: one file per policy
    <log_path>/transcripts/eval_000012.jsonl            the validation rollouts run before step 12

Each file is written whole, to a temporary name then renamed, so a viewer of a live run never
reads half a step; a step that a resumed run redoes replaces its file. A step's file holds at
most :data:`MAX_STEP_BYTES`: rows are detailed most telling first
(:func:`~agl_tinker.viewer.transcripts.pick_detailed`) and, once the cap would be passed, the
remaining rows keep their summary only (``"detail_cut": true``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agl_tinker.viewer.layout import DETAIL_KEYS, TRANSCRIPTS_DIR, transcript_file
from agl_tinker.viewer.transcripts import GroupLike, step_transcripts

__all__ = [
    "DETAIL_KEYS",
    "MAX_STEP_BYTES",
    "TRANSCRIPTS_DIR",
    "TokenTexts",
    "TranscriptWriter",
    "transcript_file",
]

MAX_STEP_BYTES = 1_000_000
"""Cap on one step's transcript file (one policy's): 1 MB."""


class TokenTexts:
    """Token id -> text, decoded one token at a time and remembered (a run reuses its vocabulary)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self._decode([token])
        return text


class TranscriptWriter:
    """Writes a sample of each step's rollouts as JSONL (``sample`` 0: writes nothing)."""

    def __init__(
        self,
        log_path: str | Path,
        *,
        sample: int,
        decode: Callable[[list[int]], str] | None = None,
        min_valid: int = 1,
        max_bytes: int = MAX_STEP_BYTES,
    ) -> None:
        if sample < 0 or max_bytes <= 0:
            raise ValueError(f"sample must be >= 0 and max_bytes > 0, got {sample}, {max_bytes}")
        self.log_path = Path(log_path)
        self.sample = sample
        self.min_valid = min_valid
        self.max_bytes = max_bytes
        self._token_text = TokenTexts(decode) if decode is not None else None

    def write(
        self, step: int, groups: Sequence[GroupLike], *, policy: str | None = None, kind: str = "step"
    ) -> dict[str, float]:
        """Write ``step``'s transcripts; returns ``transcripts/bytes`` and ``time/transcripts_s``.

        ``kind="eval"``: the validation rollouts run before ``step`` (``eval_NNNNNN.jsonl``; the
        returned keys start with ``eval/``).

        Never raises for a disk problem: a run is not stopped by its logs (the error is returned
        as ``transcripts/errors`` = 1 and the step trains on).
        """
        if self.sample == 0:
            return {}
        t0 = time.perf_counter()
        rows = step_transcripts(
            step,
            groups,
            sample=self.sample,
            min_valid=self.min_valid,
            token_text=self._token_text,
            policy=policy,
        )
        lines = self._bounded(rows)
        path = transcript_file(self.log_path, step, policy, kind)
        data = "".join(lines).encode()
        prefix = "eval/" if kind == "eval" else ""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            return {f"{prefix}transcripts/errors": 1, f"{prefix}time/transcripts_s": time.perf_counter() - t0}
        return {
            f"{prefix}transcripts/bytes": len(data),
            f"{prefix}time/transcripts_s": time.perf_counter() - t0,
        }

    def _bounded(self, rows: list[dict[str, Any]]) -> list[str]:
        """Rows as JSON lines, at most ``max_bytes`` in all: summaries first, details while they fit."""
        summaries = [{k: v for k, v in r.items() if k not in DETAIL_KEYS} for r in rows]
        detailed = [i for i, r in enumerate(rows) if "calls" in r]
        for i in detailed:  # cut until its details fit: the marker's bytes are counted from the start
            summaries[i]["detail_cut"] = True
        lines = [json.dumps(s, separators=(",", ":")) + "\n" for s in summaries]
        total = sum(len(line.encode()) for line in lines)
        # most telling first: excluded and drifting rows come before the others (pick_detailed's order)
        detailed.sort(
            key=lambda i: rows[i]["exclusion"] is None and not rows[i]["drift"] and not rows[i]["gaps"]
        )
        for i in detailed:
            full = json.dumps(rows[i], separators=(",", ":")) + "\n"
            extra = len(full.encode()) - len(lines[i].encode())
            if total + extra <= self.max_bytes:
                lines[i] = full
                total += extra
        return lines
