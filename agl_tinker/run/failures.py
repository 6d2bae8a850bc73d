"""Failures summarised, not flooded.

* **Agent errors**: Agent-lightning's runner logs every failed rollout with its full traceback. The
  first traceback of each distinct error (exception type and the innermost frame it was raised
  in) is shown once, with a line saying that later ones are counted, not shown; the progress line
  counts them (:func:`exclusion_text`). With a run log (:func:`open_run_log`), every traceback goes
  to ``<log_path>/run.log``, and "once" holds across the run's runner processes.
* **Connection errors**: a runner that cannot connect to the store or to the policy endpoint (the
  error or one in its cause chain is a refused or dropped connection) is said to be one, naming the
  address and what to check, not labelled an agent error (:func:`unreachable`).
* **The run's stop reason**: an error the CLI reports in one line (a run error) is logged by
  Agent-lightning's trainer and strategy and by our own strategy as it unwinds; those copies are
  kept out of the console (they stay in the run log).
* ``-v`` (the root logger at INFO or below) shows everything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import traceback
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai

__all__ = [
    "AGENT_ERROR_LOGGER",
    "RUN_LOG",
    "AgentErrorSummary",
    "RunErrorEchoes",
    "close_run_log",
    "error_key",
    "exclusion_text",
    "open_run_log",
    "summarise_failures",
    "unreachable",
]

RUN_LOG = "run.log"
AGENT_ERROR_LOGGER = "agentlightning.runner.agent"
ECHO_LOGGERS = (
    "agentlightning.trainer.trainer",
    "agentlightning.execution.client_server",
    "agl_tinker.algorithm.strategy",
)
"""Loggers that repeat the run's stop reason with a traceback as the run unwinds."""

_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"


class _RunLog:
    """The per-run log file of this process (inherited by forked runner processes)."""

    handler: logging.FileHandler | None = None
    console: logging.Handler | None = None
    directory: Path | None = None


def _verbose() -> bool:
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def open_run_log(log_path: str | os.PathLike[str]) -> None:
    """Write this process's warnings and errors, every agent traceback included, to
    ``<log_path>/run.log`` until :func:`close_run_log` (idempotent for one path)."""
    directory = Path(log_path).expanduser().resolve()
    if _RunLog.directory == directory:
        return
    close_run_log()
    directory.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not root.handlers:
        # Without handlers Python prints warnings through its "last resort" handler; a root handler
        # for the file would silence that console, so the console gets the same one explicitly.
        console = logging.StreamHandler()
        console.setLevel(logging.lastResort.level if logging.lastResort else logging.WARNING)
        root.addHandler(console)
        _RunLog.console = console
    handler = logging.FileHandler(directory / RUN_LOG, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    _RunLog.handler, _RunLog.directory = handler, directory


def close_run_log() -> None:
    for handler in (_RunLog.handler, _RunLog.console):
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    _RunLog.handler = _RunLog.console = _RunLog.directory = None


def error_key(exc: BaseException) -> str:
    """``Type at file:line``: the exception's type and the innermost frame it was raised in."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"


CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    httpx.ConnectError,
    httpx.RemoteProtocolError,
)
"""Exceptions that mean the peer could not be reached or dropped the connection (the store client
raises aiohttp's; the OpenAI client wraps httpx's in ``openai.APIConnectionError``)."""


def _address(exc: BaseException) -> str | None:
    """The address a connection error was about, when it carries one."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{exc.host}:{exc.port}"
    request = getattr(exc, "request", None)  # openai.APIError and httpx.RequestError carry one
    url = getattr(request, "url", None) if isinstance(exc, (openai.APIError, httpx.RequestError)) else None
    return str(url) if url is not None else None


def unreachable(exc: BaseException) -> tuple[str, str | None] | None:
    """``(error type, address or None)`` when ``exc`` is a connection error or was caused by one
    (its ``__cause__`` / ``__context__`` chain), else ``None``. A timeout is not one: the peer
    answered the connection."""
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    connection = [
        e
        for e in chain
        if isinstance(e, CONNECTION_ERRORS)
        or (isinstance(e, openai.APIConnectionError) and not isinstance(e, openai.APITimeoutError))
    ]
    if not connection:
        return None
    address = next((a for a in map(_address, chain) if a is not None), None)
    return type(connection[0]).__name__, address


def _connection_text(kind: str, address: str | None) -> str:
    where = address or "its store or policy endpoint"
    return (
        f"The runner could not connect to {where} ({kind}): a connection error, not an error in the agent. "
        f"Check that the process serving {where} (the store the trainer started, or the policy endpoint "
        "the agent was given as its base_url) is still running and reachable from this runner"
    )


class AgentErrorSummary(logging.Filter):
    """On Agent-lightning's runner logger: the first record of each distinct agent error passes,
    later ones are counted (:attr:`counts`) and written to the run log only."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def _first_in_run(self, key: str) -> bool:
        """Whether no process of this run has shown ``key`` yet (a marker file per key in the run's
        log directory; without a run log, per process)."""
        if self.counts[key] > 1:
            return False
        if _RunLog.directory is None:
            return True
        markers = _RunLog.directory / ".agent-errors"
        markers.mkdir(exist_ok=True)
        name = hashlib.sha1(key.encode()).hexdigest()[:16]
        try:
            os.close(os.open(markers / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None or _verbose():
            return True
        connection = unreachable(record.exc_info[1])
        key = error_key(record.exc_info[1]) if connection is None else " to ".join(filter(None, connection))
        self.counts[key] += 1
        if self._first_in_run(key):
            said = (
                f"The agent raised {key}; later {key} errors"
                if connection is None
                else f"{_connection_text(*connection)}; later ones"
            )
            record.msg = f"{record.getMessage()} {said} are counted in the progress line, not shown" + (
                f" (every traceback: {_RunLog.directory / RUN_LOG})" if _RunLog.directory else ""
            )
            record.args = None
            return True
        if _RunLog.handler is not None:
            _RunLog.handler.handle(record)
        return False


class RunErrorEchoes(logging.Filter):
    """Drops the console copies of a run error (the CLI prints it once); the run log keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or _verbose():
            return True
        from agl_tinker.loop.errors import RUN_ERRORS

        if isinstance(record.exc_info[1], RUN_ERRORS):
            if _RunLog.handler is not None:
                _RunLog.handler.handle(record)
            return False
        return True


_installed: dict[str, logging.Filter] = {}


def summarise_failures() -> None:
    """Install the filters above (once per process; forked runner processes inherit them)."""
    if AGENT_ERROR_LOGGER not in _installed:
        summary = AgentErrorSummary()
        logging.getLogger(AGENT_ERROR_LOGGER).addFilter(summary)
        _installed[AGENT_ERROR_LOGGER] = summary
    for name in ECHO_LOGGERS:
        if name not in _installed:
            echoes = RunErrorEchoes()
            logging.getLogger(name).addFilter(echoes)
            _installed[name] = echoes


def exclusion_text(metrics: Mapping[str, Any], prefix: str = "") -> str | None:
    """``excluded 16/32: failed 16`` (the top reason first, then the others), or ``None`` when no
    rollout of the step was excluded."""
    total = metrics.get(f"{prefix}rollouts/total")
    head = f"{prefix}excluded/"
    counts = {
        k[len(head) :]: v
        for k, v in metrics.items()
        if k.startswith(head) and "/" not in k[len(head) :] and v
    }
    if not counts or not isinstance(total, int):
        return None
    reasons = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"excluded {sum(counts.values())}/{total}: {reasons}"
