"""The group ledger of the continuous schedules (streamed minibatches, overlapped steps): where each group ended up.

Each group of the run has a key, its position in the run's stream (``batch * batch_size +
index``). Every group taken off the stream ends in ``groups.jsonl`` (in the log directory) as
``trained``, ``excluded`` (dropped by ``min_valid_per_group`` or as constant-reward),
``stale_dropped``, or ``stale_requeued`` (then it comes back). A checkpoint records which keys
are done (:meth:`GroupLedger.loop_state`); a restarted run skips exactly those and rolls out the
others again (groups in flight or finished but untrained at a kill are not lost), so no group is
trained twice in the weights. :func:`effective_ledger` reads ``groups.jsonl`` as the surviving
weights saw it (lines of steps a restart redid are superseded).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agl_tinker.dispatch.continuous import FinishedGroup

__all__ = ["FINAL_OUTCOMES", "LEDGER_FILE", "GroupLedger", "effective_ledger"]

LEDGER_FILE = "groups.jsonl"
FINAL_OUTCOMES = frozenset({"trained", "excluded", "stale_dropped"})


@dataclass
class GroupLedger:
    """Where each group of the run ended up (``groups.jsonl``), and what a checkpoint records."""

    path: Path
    start_step: int
    done: set[int] = field(default_factory=set)

    def record(self, step: int, group: FinishedGroup[Any], outcome: str, staleness: int) -> None:
        if outcome in FINAL_OUTCOMES:
            self.done.add(group.request.key)
        line = {
            "run_start": self.start_step,
            "step": step,
            "key": group.request.key,
            "attempt": group.request.attempt,
            "outcome": outcome,
            "staleness": staleness,
        }
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def loop_state(self) -> dict[str, Any]:
        """Checkpoint extras: every key below ``async_done_below`` is done, plus ``async_done``."""
        below = 0
        while below in self.done:
            below += 1
        return {
            "async_done_below": below,
            "async_done": sorted(k for k in self.done if k > below),
        }

    @classmethod
    def resume(cls, path: Path, start_step: int, batch_size: int, extra: Mapping[str, Any]) -> GroupLedger:
        """The ledger a checkpoint describes; a synchronous checkpoint means whole batches done."""
        below = int(extra.get("async_done_below", start_step * batch_size))
        done = set(range(below)) | {int(k) for k in extra.get("async_done", [])}
        return cls(path, start_step, done)


def effective_ledger(log_path: str | Path) -> list[dict[str, Any]]:
    """The lines of ``groups.jsonl`` that the final weights reflect.

    A restarted run (``run_start`` = the step it resumed at) redoes every step from there, so an
    earlier run's lines of those steps are superseded; the rest are kept, in file order.
    """
    kept: list[dict[str, Any]] = []
    current: int | None = None
    for raw in (Path(log_path) / LEDGER_FILE).read_text().splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        if line["run_start"] != current:
            current = line["run_start"]
            kept = [x for x in kept if x["step"] < line["run_start"]]
        kept.append(line)
    return kept
