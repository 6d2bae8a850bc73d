"""The checkpoint index and metrics file of a run directory, crash-safe and validated on resume.

``checkpoints.jsonl`` is written with the cookbook's ``checkpoint_utils.save_checkpoint_async``
(its ``CheckpointRecord``s, its save calls), through a store that rewrites the whole index to a
temp file, fsyncs it and renames it over the old one: a kill at any moment leaves the old index or
the new one, never a torn record. Reading is tolerant of files written otherwise (the cookbook's
plain appends, a disk that filled up): each line is parsed on its own, and a torn or garbage line
is reported by path and line number and skipped.

On resume (:func:`resume_candidates`), the valid records with a ``state_path`` are tried newest
first; the caller loads each and falls back to the previous one when the state is unreadable.
:func:`truncate_metrics` drops the metrics rows of the steps the resumed run will redo, so
``metrics.jsonl`` holds each step once. A directory with metrics but no usable checkpoint is a
run that cannot be continued: :class:`ResumeError`, unless the caller asked for a fresh run
(:func:`set_aside`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinker_cookbook.checkpoint_utils import CHECKPOINTS_BASE_NAME, CheckpointRecord
from tinker_cookbook.stores.storage import storage_from_uri
from tinker_cookbook.stores.training_store import TrainingRunStore

from agl_tinker.run.layout import METRICS_FILE, missing_index_message

logger = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """The run directory cannot be resumed as it is; the message names the file and the way out."""


@dataclass(frozen=True)
class IndexLine:
    """One line of ``checkpoints.jsonl``: its raw text and the record, or why it is unusable."""

    number: int
    text: str
    record: CheckpointRecord | None
    problem: str | None = None


@dataclass
class IndexRead:
    """What ``checkpoints.jsonl`` holds: every line, judged."""

    path: Path
    exists: bool
    lines: list[IndexLine] = field(default_factory=list)

    @property
    def records(self) -> list[CheckpointRecord]:
        return [line.record for line in self.lines if line.record is not None]

    @property
    def problems(self) -> list[str]:
        return [f"{self.path}:{line.number}: {line.problem}" for line in self.lines if line.problem]


def _parse_line(number: int, text: str) -> IndexLine:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return IndexLine(number, text, None, f"not JSON ({exc.msg}; torn or garbage line)")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return IndexLine(number, text, None, "not a checkpoint record (no 'name')")
    try:
        return IndexLine(number, text, CheckpointRecord.from_dict(data))
    except (TypeError, ValueError) as exc:
        return IndexLine(number, text, None, f"not a checkpoint record ({exc})")


def read_index(log_path: str | Path) -> IndexRead:
    """Read ``<log_path>/checkpoints.jsonl`` line by line; a missing file reads as empty."""
    path = Path(log_path) / CHECKPOINTS_BASE_NAME
    if not path.exists():
        return IndexRead(path, exists=False)
    raw = path.read_bytes().decode("utf-8", errors="replace")
    lines = [_parse_line(i, text) for i, text in enumerate(raw.splitlines(), 1) if text.strip()]
    return IndexRead(path, exists=True, lines=lines)


def _replace_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a crash leaves either the old content or the new, whole."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


class AtomicCheckpointIndex(TrainingRunStore):
    """A cookbook ``TrainingRunStore`` whose ``write_checkpoint`` replaces the index atomically.

    The new index is the valid lines of the old one plus the new record; lines that were already
    unusable are dropped (and were reported when read).
    """

    def __init__(self, log_path: str | Path) -> None:
        super().__init__(storage_from_uri(str(log_path)))
        self.log_path = Path(log_path)

    def write_checkpoint(self, record: dict[str, Any]) -> None:
        index = read_index(self.log_path)
        for problem in index.problems:
            logger.error("dropping unusable checkpoint index line %s", problem)
        kept = [line.text for line in index.lines if line.record is not None]
        _replace_atomically(index.path, "".join(f"{t}\n" for t in [*kept, json.dumps(record)]))


def resume_candidates(log_path: str | Path) -> list[CheckpointRecord]:
    """Records to resume from, newest first: valid lines with a ``state_path`` and a ``batch``.

    Unusable lines are logged as errors naming the file and line. Raises :class:`ResumeError`
    when ``metrics.jsonl`` has rows but the index is missing (a run whose checkpoints are gone
    would restart from step 0 with fresh weights and mix two runs' metrics).
    """
    log_path = Path(log_path)
    index = read_index(log_path)
    for problem in index.problems:
        logger.error("skipping unusable checkpoint index line %s", problem)
    error = missing_index_error(log_path)
    if error is not None:
        raise error
    usable = [r for r in index.records if r.state_path is not None and r.batch is not None]
    return list(reversed(usable))


def missing_index_error(log_path: str | Path, policies: Sequence[str] = ()) -> ResumeError | None:
    """The refusal for a ``log_path`` with metrics rows but no checkpoint index, if that is the case
    (:func:`agl_tinker.run.layout.missing_index_message`, which the CLI asks before importing this)."""
    message = missing_index_message(log_path, policies)
    return None if message is None else ResumeError(message)


def no_usable_checkpoint(log_path: str | Path, tried: list[CheckpointRecord]) -> ResumeError:
    """The error for a run directory whose every checkpoint failed to load (or has none)."""
    index = Path(log_path) / CHECKPOINTS_BASE_NAME
    names = ", ".join(str(r.state_path) for r in tried) or "none"
    return ResumeError(
        f"no checkpoint listed in {index} could be loaded (tried: {names}); set fresh_start=True to "
        "start over (the old files are kept, renamed aside), or use another log_path"
    )


def set_aside(log_path: str | Path) -> list[Path]:
    """Rename ``metrics.jsonl`` and ``checkpoints.jsonl`` aside (``<name>.old-<time>``) for a fresh run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for name in (METRICS_FILE, CHECKPOINTS_BASE_NAME):
        path = Path(log_path) / name
        if path.exists():
            target = path.with_name(f"{name}.old-{stamp}")
            os.replace(path, target)
            moved.append(target)
    return moved


def truncate_metrics(log_path: str | Path, next_step: int) -> int:
    """Drop the rows of steps ``>= next_step`` (they are redone) and unreadable rows; the count.

    The file is replaced atomically, so a crash here loses nothing the restart would not redo.
    """
    path = Path(log_path) / METRICS_FILE
    if not path.exists():
        return 0
    kept: list[str] = []
    dropped = 0
    for text in path.read_text(errors="replace").splitlines():
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            dropped += 1
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int) and step >= next_step:
            dropped += 1
            continue
        kept.append(text)
    if dropped:
        _replace_atomically(path, "".join(f"{t}\n" for t in kept))
        logger.info("dropped %d rows of %s for steps from %d on (redone)", dropped, path, next_step)
    return dropped
