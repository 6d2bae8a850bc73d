"""What a run says about itself before it trains: the backend it trains on and where its outputs go,
as its first output line and in ``config.json``; and the metrics an identity override adds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinker_cookbook.utils import ml_log

from agl_tinker.loop.config import TrainConfig
from agl_tinker.run.identity import backend_description

__all__ = ["FirstMetricsLogger", "announce_run", "with_first_metrics"]

CONFIG_FILE = "config.json"


def announce_run(config: TrainConfig) -> str:
    """Add ``backend`` and ``outputs`` to ``<log_path>/config.json`` (written by the cookbook's
    ``ml_log``); the line the run prints first."""
    where = backend_description()
    log_path = Path(config.log_path)
    path = log_path / CONFIG_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = None
        if isinstance(data, dict):
            data.update(backend=where, outputs=str(log_path))
            path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return f"training on the {where}; outputs in {log_path} (metrics.jsonl, checkpoints.jsonl, run.log)"


class FirstMetricsLogger(ml_log.Logger):
    """A cookbook logger that adds ``extra`` to the first row it logs, then passes everything on."""

    def __init__(self, inner: ml_log.Logger, extra: dict[str, Any]) -> None:
        self.inner = inner
        self.extra = dict(extra)

    def log_hparams(self, config: Any) -> None:
        self.inner.log_hparams(config)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.extra:
            metrics = {**metrics, **self.extra}
            self.extra = {}
        self.inner.log_metrics(metrics, step=step)

    def log_long_text(self, key: str, text: str) -> None:
        self.inner.log_long_text(key, text)

    def close(self) -> None:
        self.inner.close()

    def sync(self) -> None:
        self.inner.sync()

    def get_logger_url(self) -> str | None:
        return self.inner.get_logger_url()


def with_first_metrics(logger: ml_log.Logger, extra: dict[str, Any]) -> ml_log.Logger:
    """``logger``, wrapped to add ``extra`` to its first row when there is anything to add."""
    return FirstMetricsLogger(logger, extra) if extra else logger
