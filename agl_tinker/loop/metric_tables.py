"""The run's metrics loggers: the cookbook's, with its console table rendered only when it is shown.

``ml_log.setup_logging`` always adds a ``PrettyPrintLogger``: every step it renders a rich table of the
whole metrics row (over a hundred keys) into a captured string and hands that to the
``tinker_cookbook.utils.ml_log`` logger at INFO. agl-tinker leaves the logging module to the user and is
quiet by default (the root logger at WARNING), so the table was rendered and then dropped. A profile of
a paced Hello run (``py-spy --gil``, ``benchmarks/async_training.py``) put that rendering at half of the
loop's own CPU, between one step's save-for-sampler and the next ``forward_backward``: time the
training client sits idle. Whether the table is shown is decided at each row, so turning INFO on during
a run brings it back.
"""

from __future__ import annotations

import logging
from typing import Any

from tinker_cookbook.utils import ml_log

__all__ = ["setup_metrics_logging"]

_TABLE_LOG = logging.getLogger(ml_log.__name__)
"""Where ``PrettyPrintLogger`` sends its tables (the cookbook module's own logger)."""


class _WhenShown(ml_log.Logger):
    """A ``PrettyPrintLogger`` that renders only when its logger would emit the INFO record."""

    def __init__(self, inner: ml_log.Logger) -> None:
        self.inner = inner

    def log_hparams(self, config: Any) -> None:
        if _TABLE_LOG.isEnabledFor(logging.INFO):
            self.inner.log_hparams(config)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if _TABLE_LOG.isEnabledFor(logging.INFO):
            self.inner.log_metrics(metrics, step)

    def close(self) -> None:
        self.inner.close()


def setup_metrics_logging(
    log_dir: str, wandb_project: str | None, wandb_name: str | None, config: Any
) -> ml_log.Logger:
    """``ml_log.setup_logging`` (metrics.jsonl and ``config.json``, the console table, W&B when
    configured), leaving the logging module's configuration alone, with the console tables (the
    config's, then each row's) rendered only when shown."""
    logger = ml_log.setup_logging(
        log_dir=log_dir,
        wandb_project=wandb_project,
        wandb_name=wandb_name,
        config=None,  # logged below, once the table is wrapped
        do_configure_logging_module=False,
    )
    if isinstance(logger, ml_log.MultiplexLogger):
        logger.loggers = [
            _WhenShown(child) if isinstance(child, ml_log.PrettyPrintLogger) else child
            for child in logger.loggers
        ]
    if config is not None:
        logger.log_hparams(config)
    return logger
