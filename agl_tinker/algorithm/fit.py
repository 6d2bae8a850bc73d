"""One command trains an agent: :func:`fit` (store server, algorithm and runner processes)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import agentlightning as agl
from agentlightning.execution.client_server import ClientServerExecutionStrategy

from agl_tinker.algorithm.strategy import LeanServerStrategy
from agl_tinker.algorithm.tinker_algorithm import TinkerAlgorithm, fast_runner, poll_interval_for
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.train import TrainResult

__all__ = ["fit", "interrupt_watch"]


def fit(
    agent: agl.LitAgent[Any],
    config: TrainConfig,
    train_tasks: Sequence[Any] | str | os.PathLike[str],
    val_tasks: Sequence[Any] | str | os.PathLike[str] | None = None,
    *,
    n_runners: int = 2,
    required_fields: Sequence[str] = (),
    store_host: str = "127.0.0.1",
    store_port: int | None = None,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
    strategy: ClientServerExecutionStrategy | None = None,
) -> TrainResult:
    """One command: store server, this algorithm and ``n_runners`` runner processes via ``agl.Trainer``.

    ``train_tasks``/``val_tasks``: lists of task dicts, or a CSV/JSONL/JSON/Parquet file's path (a
    ``str`` or ``Path``), as :func:`agl_tinker.loop.train.train` takes them.

    ``on_step(step, metrics)`` is called after each training step (see :func:`agl_tinker.loop.train.train`).
    ``strategy`` replaces the runner processes (and ``n_runners``, ``store_*``), e.g. with
    :class:`agl_tinker.runners.ray_runners.RayRunnerStrategy`'s Ray actors. The runners poll an
    empty queue every :func:`poll_interval_for` (their number) seconds.
    """
    algorithm = TinkerAlgorithm(config, required_fields=required_fields, on_step=on_step)
    strategy = strategy or LeanServerStrategy(
        n_runners=n_runners, server_host=store_host, server_port=store_port
    )
    trainer = agl.Trainer(
        algorithm=algorithm,
        n_runners=n_runners,
        runner=fast_runner(poll_interval_for(getattr(strategy, "n_runners", n_runners))),
        strategy=strategy,
    )
    with interrupt_watch() as interrupted:
        trainer.fit(
            agent,
            train_dataset=_dataset(train_tasks),
            val_dataset=_dataset(val_tasks) if val_tasks else None,
        )
    if algorithm.error is not None:
        raise algorithm.error
    if algorithm.result is None:
        if interrupted:
            raise KeyboardInterrupt  # Agent-lightning stopped its processes and swallowed the Ctrl-C
        raise RuntimeError("training did not finish: see the log above")
    return algorithm.result


def _dataset(tasks: Sequence[Any] | str | os.PathLike[str]) -> Any:
    """Tasks as ``agl.Trainer.fit`` passes them on to the algorithm: a file's path as a ``Path``
    (``Trainer.fit`` sends a plain string to its old ``fit_v0`` API; ``list()`` would split it into
    characters), anything else as a list."""
    if isinstance(tasks, (str, os.PathLike)):
        return Path(tasks)
    return list(tasks)


@contextlib.contextmanager
def interrupt_watch() -> Iterator[list[bool]]:
    """Note a Ctrl-C (a non-empty list) and keep the shutdown it starts quiet.

    Agent-lightning's strategy turns Ctrl-C into an orderly stop of its processes and then
    returns as if the run had ended; the note lets :func:`fit` raise ``KeyboardInterrupt`` after
    all, so callers can tell "stopped" from "failed". The warnings and cancellation tracebacks
    that the stop logs on the way are what the user asked for, not news, so they are muted.
    """
    interrupted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    loggers = [logging.getLogger(name) for name in ("agentlightning", "agl_tinker", "asyncio")]
    levels = [lg.level for lg in loggers]

    def on_sigint(signum: int, frame: Any) -> None:
        if not logging.getLogger().isEnabledFor(logging.INFO):
            for lg in loggers:
                lg.setLevel(logging.CRITICAL)
        interrupted.append(True)
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
