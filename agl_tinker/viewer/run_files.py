"""What ``agl-tinker view`` reads from a log path, read lazily: metrics rows, steps, transcript rows.

Nothing is read until asked for: ``metrics.jsonl`` is read from where the last read stopped (a
live run appends to it), a step's transcript file only when that step is opened (and the last
few opened are kept, keyed by file size and time, so a rewritten step is read again).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from agl_tinker.run.layout import METRICS_FILE
from agl_tinker.viewer.layout import DETAIL_KEYS, POLICY_NAME, TRANSCRIPTS_DIR, transcript_file

__all__ = ["RunFiles"]

_STEP_FILE = re.compile(rf"^(step|eval)_(\d{{6,}})(?:\.({POLICY_NAME}))?\.jsonl$")
_CACHED_STEPS = 8


class RunFiles:
    """One run's log directory, as the viewer's API serves it."""

    def __init__(self, log_path: str | Path) -> None:
        self.path = Path(log_path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} is not a directory (give a run's log_path)")
        self._metrics: list[dict[str, Any]] = []
        self._metrics_offset = 0
        self._metrics_id: tuple[int, int] | None = None
        self._steps: OrderedDict[tuple[str, int, int], list[dict[str, Any]]] = OrderedDict()

    # -- metrics ------------------------------------------------------------------------------

    def metrics(self) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl`` so far (new lines are read, earlier ones kept)."""
        path = self.path / METRICS_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return self._metrics
        if self._metrics_id is not None and (stat.st_ino, stat.st_dev) != self._metrics_id:
            self._metrics, self._metrics_offset = [], 0  # replaced (a resumed run truncates it)
        if stat.st_size < self._metrics_offset:
            self._metrics, self._metrics_offset = [], 0
        self._metrics_id = (stat.st_ino, stat.st_dev)
        with path.open("rb") as f:
            f.seek(self._metrics_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        for line in data[:end].splitlines():
            if line.strip():
                try:
                    self._metrics.append(json.loads(line))
                except ValueError:
                    continue
        self._metrics_offset += end
        return self._metrics

    # -- transcripts --------------------------------------------------------------------------

    def steps(self, kind: str = "step") -> dict[str, list[int]]:
        """Policy (``""``: a one-policy run) -> the steps that have transcripts of ``kind``, in order."""
        out: dict[str, list[int]] = {}
        directory = self.path / TRANSCRIPTS_DIR
        if not directory.is_dir():
            return out
        for entry in directory.iterdir():
            match = _STEP_FILE.match(entry.name)
            if match and match[1] == kind:
                out.setdefault(match[3] or "", []).append(int(match[2]))
        return {policy: sorted(steps) for policy, steps in sorted(out.items())}

    def rows(self, step: int, policy: str = "", kind: str = "step") -> list[dict[str, Any]]:
        """The transcript rows of ``step`` (of ``policy``, of ``kind``); ``[]`` when it has none.

        Raises:
            ValueError: ``policy`` is not a policy name, or ``kind`` not one of ``step``, ``eval``.
        """
        if policy and not re.fullmatch(POLICY_NAME, policy):
            raise ValueError(f"bad policy name {policy!r}")
        path = transcript_file(self.path, step, policy, kind)
        name = path.name
        try:
            stat = path.stat()
        except FileNotFoundError:
            return []
        key = (name, stat.st_size, stat.st_mtime_ns)
        cached = self._steps.get(key)
        if cached is None:
            with path.open() as f:
                cached = [json.loads(line) for line in f if line.strip()]
            self._steps[key] = cached
            while len(self._steps) > _CACHED_STEPS:
                self._steps.popitem(last=False)
        else:
            self._steps.move_to_end(key)
        return cached

    def summaries(self, step: int, policy: str = "", kind: str = "step") -> list[dict[str, Any]]:
        """The rows of ``step`` without their calls; ``detailed`` says which have them."""
        out = []
        for i, row in enumerate(self.rows(step, policy, kind)):
            summary = {k: v for k, v in row.items() if k not in DETAIL_KEYS}
            summary["index"] = i
            summary["detailed"] = "calls" in row
            out.append(summary)
        return out

    def rollout(self, step: int, index: int, policy: str = "", kind: str = "step") -> dict[str, Any] | None:
        """Row ``index`` of ``step``, with its calls when it was detailed; ``None`` if there is none."""
        rows = self.rows(step, policy, kind)
        return rows[index] if 0 <= index < len(rows) else None
