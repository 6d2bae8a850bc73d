"""Running a training command: Ctrl-C becomes a message that says where the run stopped and how to resume."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Interrupted", "StepTracker", "train_until_stopped"]


class Interrupted(Exception):
    """Ctrl-C stopped a run; the message says where, and how to resume."""


class StepTracker:
    """``on_step`` callback that remembers how far a run got, for the Ctrl-C message.

    ``policies``: a several-policy run's names; their checkpoints are indexed per policy
    (:func:`agl_tinker.run.layout.policy_dir`), all at the same steps: the first one's is named.
    """

    def __init__(self, log_path: str, n_steps: int | None = None, policies: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self.n_steps = n_steps
        self.policies = tuple(policies)
        self.last_step: int | None = None

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.last_step = step

    def stopped_message(self, log_path_given: bool) -> str:
        """``stopped at step N; rerun ... to resume from checkpoint ...`` (steps 0-based, as everywhere)."""
        from tinker_cookbook import checkpoint_utils

        from agl_tinker.run.layout import policy_dir

        if self.last_step is None:
            stopped = "stopped"
        elif self.n_steps is not None and self.last_step + 1 >= self.n_steps:
            stopped = f"stopped after the last step ({self.last_step}), before the final checkpoint"
        else:
            stopped = f"stopped at step {self.last_step + 1}"
        again = "rerun the same command" if log_path_given else f"rerun with --log-path {self.log_path}"
        index_dir = policy_dir(self.log_path, self.policies[0]) if self.policies else self.log_path
        checkpoint = checkpoint_utils.get_last_checkpoint(str(index_dir))
        if checkpoint is None:
            return f"{stopped}, before the first checkpoint; {again} to start again"
        return f"{stopped}; {again} to resume from checkpoint {checkpoint.name} ({checkpoint.state_path})"


def train_until_stopped(args: argparse.Namespace, config: Any, run: Callable[[StepTracker], Any]) -> Any:
    """``run(on_step)``, with Ctrl-C turned into :class:`Interrupted` carrying the resume hint."""
    tracker = StepTracker(config.log_path, config.max_steps, list(config.policies))
    try:
        return run(tracker)
    except KeyboardInterrupt:
        given = bool(args.log_path) or any(kv.startswith("log_path=") for kv in args.key_values)
        raise Interrupted(tracker.stopped_message(given)) from None
