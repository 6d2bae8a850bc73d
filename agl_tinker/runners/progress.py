"""What a split-mode runner command says while it works: a line per ``every`` rollouts finished.

Runner processes report each rollout they finish (its closing status) through a
:class:`ProgressSender`, a picklable callable over a multiprocessing queue that
:class:`agl_tinker.runners.deadline.DeadlineRunner` calls as ``on_finished``. In the launching
process a :class:`ProgressPrinter` reads the queue and prints, for the whole command::

    Hello 1024 runners: 20 rollouts finished (18 succeeded, 2 failed)

and with ``verbose`` one line per rollout (``Hello 1024 runners: Worker-1 rollout ro-3f2a... failed``).
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections import Counter
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["ProgressPrinter", "ProgressSender"]

_READ_S = 0.2  # how often the reader thread looks at its stop flag between reports


class ProgressSender:
    """``on_finished(worker_id, rollout_id, status)`` for runner processes: hands the report over.

    Never blocks the runner: the queue's own feeder thread does the writing.
    """

    def __init__(self, reports: Any) -> None:
        self._reports = reports

    def __call__(self, worker_id: str, rollout_id: str, status: str) -> None:
        self._reports.put_nowait((worker_id, rollout_id, status))


class ProgressPrinter:
    """Counts the rollouts a runner command's processes finish; says so every ``every`` of them.

    :meth:`note` is the rule (testable without processes); :meth:`start` / :meth:`stop` run a
    thread that feeds it from :attr:`sender`'s queue. :meth:`total` words the count for the stop
    line.
    """

    def __init__(
        self,
        label: str,
        every: int = 20,
        verbose: bool = False,
        say: Callable[[str], None] | None = None,
        ctx: BaseContext | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.label = label
        self.every = every
        self.verbose = verbose
        self.counts: Counter[str] = Counter()
        self._say = say or (lambda line: print(line, flush=True))
        self._reports: Any = (ctx or multiprocessing.get_context()).Queue()
        self.sender = ProgressSender(self._reports)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, worker_id: str, rollout_id: str, status: str) -> None:
        self.counts[status] += 1
        if self.verbose:
            self._say(f"{self.label}: {worker_id} rollout {rollout_id} {status}")
        elif self.counts.total() % self.every == 0:
            self._say(f"{self.label}: {self.total()}")

    def total(self) -> str:
        """``20 rollouts finished (18 succeeded, 2 failed)``, or ``no rollout finished``."""
        n = self.counts.total()
        if n == 0:
            return "no rollout finished"
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{n} rollout{'s' if n != 1 else ''} finished ({parts})"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._read, name="runner-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading, after the reports already handed over (the runner processes have ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._drain()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.note(*self._reports.get(timeout=_READ_S))
            except queue.Empty:
                continue

    def _drain(self) -> None:
        while True:
            try:
                self.note(*self._reports.get_nowait())
            except (queue.Empty, OSError, ValueError):
                return
