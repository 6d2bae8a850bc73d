"""A live, one-line progress display for the training loop (batch, rollouts done/in flight, reward)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from agl_tinker.dispatch.types import DispatchProgress
from agl_tinker.run.failures import exclusion_text
from agl_tinker.run.flat_reward import FlatRewardWatch


def step_label(step: int, n_steps: int) -> str:
    """How a step is shown: its 0-based number (as in ``metrics.jsonl`` and checkpoints) and the count.

    Step ``k`` trains on batch ``k``; checkpoint ``00000k`` and "eval @ step k" are the weights
    after ``k`` steps, i.e. before step ``k``. ``step 3 (4/20)`` is the fourth of 20 steps.
    """
    return f"step {step} ({step + 1}/{n_steps})"


class ProgressDisplay:
    """Redraws one status line on a terminal; prints one line per step elsewhere (CI logs).

    Updates arrive on every rollout state change; on a terminal they are throttled to ~10 Hz so
    drawing never competes with the loop.
    """

    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None, flat_steps: int = 3) -> None:
        self.enabled = enabled
        self.flat = FlatRewardWatch(flat_steps)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._label = ""
        self._total = 0
        self._last_draw = 0.0
        self._last_reward: float | None = None

    def begin(self, label: str, total: int) -> None:
        self._label, self._total = label, total
        self._draw(DispatchProgress(total=total, done=0, in_flight=0, not_started=total), force=True)

    def update(self, progress: DispatchProgress) -> None:
        self._draw(progress, force=progress.done == progress.total)

    def end(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def step_done(self, step: int, n_steps: int, metrics: Mapping[str, Any]) -> None:
        reward = metrics.get("reward/mean")
        self._last_reward = reward if isinstance(reward, float) else self._last_reward
        if not self.enabled:
            return
        parts = [step_label(step, n_steps)]
        for key, fmt in (
            ("reward/mean", "reward {:+.3f}"),
            ("eval/reward/mean", "eval reward {:+.3f}"),
            ("align/drift_events", "drift {}"),
            ("time/sampling_s", "sampling {:.1f}s"),
            ("time/training_s", "training {:.1f}s"),
        ):
            value = metrics.get(key)
            if value is not None:
                parts.append(fmt.format(value))
            if key == "eval/reward/mean" and (excluded := exclusion_text(metrics)) is not None:
                parts.append(excluded)  # `excluded 16/32: failed 16`: how many, and why
        self.stream.write(" | ".join(parts) + "\n")
        self.stream.flush()
        if (warning := self.flat.see(step, metrics)) is not None:
            self.note(warning)  # once per run

    def note(self, line: str) -> None:
        """Print one line that needs no redraw (resuming, a warning the user must act on)."""
        if self.enabled:
            self.end()
            self.stream.write(line + "\n")
            self.stream.flush()

    def _draw(self, p: DispatchProgress, *, force: bool = False) -> None:
        if not (self.enabled and self.tty):
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        reward = "" if self._last_reward is None else f" | last reward {self._last_reward:+.3f}"
        line = f"{self._label}: rollouts {p.done}/{p.total} done, {p.in_flight} in flight{reward}"
        self.stream.write("\r\033[K" + line)
        self.stream.flush()
