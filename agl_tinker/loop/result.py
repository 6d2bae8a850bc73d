"""What a training run did: :class:`TrainResult`, returned by :func:`agl_tinker.loop.train.train`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agl_tinker.run.layout import CHECKPOINT_INDEX, METRICS_FILE

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What a run did: per-step metrics, evaluations, where its artefacts are."""

    log_path: Path
    start_step: int
    end_step: int
    """The step the run reached (its final checkpoint's ``batch``): ``n_steps``, or less when the
    stream of groups ended early."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    final_state_path: str | None = None
    final_sampler_path: str | None = None
    curve_path: Path | None = None
    seconds: float = 0.0
    policy_checkpoints: dict[str, dict[str, str]] = field(default_factory=dict)
    """Several policies: policy name -> its final checkpoint's ``state_path``/``sampler_path``."""
    policy_curves: dict[str, Path] = field(default_factory=dict)
    """Several policies: policy name -> its reward curve (``log_path/policies/<name>/``)."""

    @property
    def rewards(self) -> list[float]:
        return [s["reward/mean"] for s in self.steps if s.get("reward/mean") is not None]

    @property
    def metrics_path(self) -> Path:
        return self.log_path / METRICS_FILE

    @property
    def checkpoints_path(self) -> Path:
        return self.log_path / CHECKPOINT_INDEX
