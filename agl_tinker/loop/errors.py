"""The errors that end a training run with a message meant for the user.

The CLI prints such an error's message as one line and exits 1 (no traceback without ``-v``);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from agl_tinker.loop.checkpoints import ResumeError
from agl_tinker.tinker_retry import TinkerCallError

__all__ = ["RUN_ERRORS", "NoTrainableRollouts", "StepStalled", "StoreLost", "TrainingAborted"]


class TrainingAborted(RuntimeError):
    """The run stopped on purpose, for the reason in the message (the CLI exits 1)."""


class NoTrainableRollouts(TrainingAborted):
    """``max_empty_steps`` steps in a row had no rollout to train on."""


class StepStalled(TrainingAborted):
    """Streaming/async training: no group finished for far longer than any rollout may take."""


class StoreLost(TrainingAborted):
    """The LightningStore stopped answering, or restarted and forgot this run's rollouts."""


RUN_ERRORS: tuple[type[Exception], ...] = (TrainingAborted, ResumeError, TinkerCallError)
"""Errors that end a run with a message meant for the user (no traceback needed)."""
