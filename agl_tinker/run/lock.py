"""An exclusive lock on a run's ``log_path`` for the run's lifetime.

Two trainings writing one ``log_path`` interleave their metrics and checkpoint indexes; the second
one must fail at once instead. The lock is an OS file lock (``fcntl.flock``) on
``<log_path>/run.lock``: the kernel drops it when the holding process exits in any way, a SIGKILL
included, so a crashed run never leaves a stale lock behind. The file keeps the holder's pid, for
the message the next run prints.

Within one process the lock is re-entrant and counted: the CLI, ``TinkerAlgorithm`` and ``train``
may each :func:`claim` it, nested, and only the :func:`release` of the outermost claim gives it
up (``train`` ending inside the CLI's run leaves the lock to the CLI). A forked child (runner
processes) closes its inherited copy of the descriptor, so only the training process holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from agl_tinker.loop.config import ConfigError

__all__ = ["LOCK_FILE", "LogPathInUse", "claim", "holds", "release"]

LOCK_FILE = "run.lock"


@dataclass
class _Hold:
    fd: int
    """The open descriptor holding the lock."""
    claims: int = 1
    """Claims not released yet; the lock is given up when the last one is."""


_held: dict[Path, _Hold] = {}
"""Resolved log path -> this process's hold of its lock."""


class LogPathInUse(ConfigError):
    """Another process holds the run lock of this ``log_path``."""


def _key(log_path: str | os.PathLike[str]) -> Path:
    return Path(log_path).expanduser().resolve()


def holds(log_path: str | os.PathLike[str]) -> bool:
    """This process holds the lock of ``log_path``."""
    return _key(log_path) in _held


def claim(log_path: str | os.PathLike[str]) -> None:
    """Hold the lock of ``log_path`` (created as a directory if needed) until as many
    :func:`release` calls as claims, or exit.

    Raises:
        LogPathInUse: another process holds it; the message names the path and that process.
    """
    key = _key(log_path)
    if key in _held:
        _held[key].claims += 1
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LogPathInUse(
            f"log_path={str(log_path)!r} is in use by another run (pid {holder}): wait for it to finish or "
            "stop it, or choose another log_path"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = _Hold(fd)


def release(log_path: str | os.PathLike[str]) -> None:
    """Undo one :func:`claim` of ``log_path``; the last one gives the lock up (the file stays,
    empty of meaning). Nothing when this process does not hold it."""
    key = _key(log_path)
    hold = _held.get(key)
    if hold is None:
        return
    hold.claims -= 1
    if hold.claims > 0:
        return
    del _held[key]
    try:
        os.ftruncate(hold.fd, 0)
        fcntl.flock(hold.fd, fcntl.LOCK_UN)
    finally:
        os.close(hold.fd)


def _forget_in_child() -> None:
    """After ``fork``: close the inherited descriptors without unlocking (the parent keeps the lock)."""
    for hold in _held.values():
        with contextlib.suppress(OSError):
            os.close(hold.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)
