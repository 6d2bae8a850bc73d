"""Claiming a ``log_path`` for a run, before anything starts: its lock, and the refusals that need
nothing but the configuration and the files already there (a missing checkpoint index, another
run's identity). Called by :func:`agl_tinker.loop.preflight.check_setup`, so by the CLI and by
``TinkerAlgorithm``; :func:`agl_tinker.loop.train.train` repeats it with the dataset known.

This module stays light to import (no tinker, no cookbook, no openai): the CLI asks
:func:`finished_message` and :func:`refuse_unresumable` before its heavy imports, so a rerun of a
finished run, a log path without its checkpoint index and one holding another run are answered in
a moment (they waited for torch's import, and for the model check, before).
"""

from __future__ import annotations

import json
from pathlib import Path

from agl_tinker.loop.config import ConfigError, TrainConfig
from agl_tinker.run import identity, layout, lock

__all__ = [
    "ResumeRefused",
    "claim_run",
    "finished_message",
    "refuse_unresumable",
    "release_run",
]


class ResumeRefused(ConfigError):
    """The ``log_path`` holds a run that cannot be resumed as it is (a setup error: exit status 2)."""


def claim_run(config: TrainConfig) -> None:
    """Lock ``config.log_path`` for this process, open its run log (``run.log``: warnings, errors,
    every agent traceback) and summarise failures on the console, then refuse at once what a
    resume would refuse. Claims nest (:mod:`agl_tinker.run.lock` counts them): each is undone by
    one :func:`release_run`, and a refusal undoes its own, so an outer claim keeps the lock.

    Raises:
        lock.LogPathInUse: another process runs on this ``log_path``.
        ResumeRefused: metrics of an earlier run but no checkpoint index (without ``fresh_start``).
        identity.IdentityMismatch: the recorded run has another model, renderer, LoRA rank, loss or
            policies (the dataset is compared once it is loaded, by ``train``).
    """
    from agl_tinker.run import failures  # imports openai: not for the early refusals

    lock.claim(config.log_path)
    try:
        failures.open_run_log(config.log_path)
        failures.summarise_failures()
        refuse_unresumable(config)
    except BaseException:
        release_run(config)  # a refused run holds nothing: the process may go on (a notebook) or retry
        raise


def refuse_unresumable(config: TrainConfig) -> None:
    """Refuse what the files already in ``config.log_path`` make unresumable; nothing with
    ``fresh_start`` (which sets the earlier run aside).

    Raises:
        ResumeRefused: metrics of an earlier run but no checkpoint index.
        identity.IdentityMismatch: the recorded run has another model, renderer, LoRA rank, loss or
            policies.
    """
    if config.fresh_start:
        return
    message = layout.missing_index_message(config.log_path, list(config.policies))
    if message is not None:
        raise ResumeRefused(message)
    identity.check_identity(config, identity.config_identity(config))


def release_run(config: TrainConfig) -> None:
    """Undo one :func:`claim_run`; the outermost closes the run log and gives up the lock."""
    from agl_tinker.run import failures

    lock.release(config.log_path)
    if not lock.holds(config.log_path):
        failures.close_run_log()


def _newest_checkpoint(index_dir: Path) -> dict[str, object] | None:
    """The index line with the highest ``batch`` and a ``state_path``; unreadable lines are skipped
    (the resume reports them)."""
    path = index_dir / layout.CHECKPOINT_INDEX
    if not path.exists():
        return None
    newest: dict[str, object] | None = None
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("batch"), int)
            or not record.get("state_path")
        ):
            continue
        if newest is None or record["batch"] >= newest["batch"]:  # type: ignore[operator]
            newest = record
    return newest


def finished_message(config: TrainConfig) -> str | None:
    """One line when ``config.log_path`` holds a run that already finished ``max_steps`` steps (a
    rerun has nothing to do), else ``None``. Without ``max_steps`` the step count depends on the
    dataset, so nothing is said here.

    A run is finished when the newest checkpoint of its index reaches ``max_steps``; a
    several-policy run (``config.policies``) when every policy's own index
    (:func:`agl_tinker.run.layout.policy_dir`) does, each policy's weights then named."""
    if config.max_steps is None or config.fresh_start:
        return None
    names = list(config.policies)
    newest: list[dict[str, object]] = []
    for index_dir in layout.index_dirs(config.log_path, names):
        record = _newest_checkpoint(index_dir)
        if record is None or int(record["batch"]) < config.max_steps:  # type: ignore[call-overload]
            return None
        newest.append(record)
    weights = [str(record.get("sampler_path") or record["state_path"]) for record in newest]
    where = ", ".join(f"{name} {w}" for name, w in zip(names, weights, strict=True)) if names else weights[0]
    return (
        f"{config.log_path} holds a finished run: all {config.max_steps} steps done (checkpoint "
        f"{newest[0].get('name')}: {where}); nothing to do. Raise max_steps to train further, or use "
        "another log_path for a new run"
    )
