"""The split-mode runner command: runner processes for a store another command serves, and what it says.

``agl-tinker hello runner`` (and any ``run_split_runners`` caller) prints, on stdout:

* that it reached the store (the CLI, after its 5 s check), then
* a line per ``every`` rollouts finished (:class:`agl_tinker.runners.progress.ProgressPrinter`;
  every rollout with ``verbose``), and
* why it stopped (:class:`RunnersStopped`): Ctrl-C, the store gone (:class:`StoreWatch`: no answer
  for ``gone_after_s``), or its runner processes ended (crash loop, or each finished its work).

A gone store no longer leaves runners retrying forever: Agent-lightning's runners log a warning
or an error for every retry (several a second per runner). In runner processes, without ``-v``,
the first such store-client message is shown with a note, the rest are dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from typing import Any

import agentlightning as agl
from agentlightning.execution.events import ExecutionEvent
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import API_V1_AGL_PREFIX

from agl_tinker.algorithm import LeanServerStrategy, fast_runner, interrupt_watch
from agl_tinker.net import SPLIT_STORE_PORT
from agl_tinker.run.reach import Deadline, Unreachable, probe
from agl_tinker.runners.progress import ProgressPrinter

__all__ = ["RunnersStopped", "SplitRunnerStrategy", "StoreWatch", "run_split_runners"]

logger = logging.getLogger(__name__)

STORE_CLIENT_LOGGER = "agentlightning.store.client"
_DEFAULT_GONE_AFTER_S = 5.0


@dataclasses.dataclass(frozen=True)
class RunnersStopped:
    """Why a runner command stopped, and what its runners did; :meth:`line` words it."""

    reason: str
    finished: str
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C; 1 for any other stop (nobody asked the runners to stop)."""
        return 130 if self.interrupted else 1

    def line(self, label: str) -> str:
        return f"{label}: stopped: {self.reason}; {self.finished}"


class StoreWatch:
    """A thread that asks the store's health route every ``every_s``; when it has not answered for
    ``gone_after_s``, it records :attr:`reason` and sets the run's stop event."""

    def __init__(
        self, store_url: str, stop_evt: ExecutionEvent, gone_after_s: float, every_s: float = 0.5
    ) -> None:
        self.store_url = store_url.rstrip("/")
        self.stop_evt = stop_evt
        self.gone_after_s = gone_after_s
        self.every_s = every_s
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="store-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5.0)

    def _answers(self) -> bool:
        try:
            probe(
                self.store_url,
                Deadline(min(2.0, self.gone_after_s)),
                what="the store",
                hint="",
                path=API_V1_AGL_PREFIX + "/health",
            )
        except Unreachable:
            return False
        return True

    def _watch(self) -> None:
        silent_since: float | None = None
        while not self._done.wait(self.every_s) and not self.stop_evt.is_set():
            if self._answers():
                silent_since = None
                continue
            now = time.monotonic()
            silent_since = now if silent_since is None else silent_since
            if now - silent_since >= self.gone_after_s:
                self.reason = (
                    f"the store at {self.store_url} stopped answering (nothing for {self.gone_after_s:g} s)"
                )
                self.stop_evt.set()
                return


class _FirstStoreClientMessage(logging.Filter):
    """On the store client's logger in a runner process: the first warning passes, with a note."""

    def __init__(self, gone_after_s: float) -> None:
        super().__init__()
        self.gone_after_s = gone_after_s
        self.shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or logging.getLogger().getEffectiveLevel() <= logging.INFO:
            return True
        if self.shown:
            return False
        self.shown = True
        record.msg = (
            f"{record.getMessage()} (later store-client messages of this runner are not shown, -v shows them; "
            f"the runners stop if the store does not answer for {self.gone_after_s:g} s)"
        )
        record.args = None
        return True


class SplitRunnerStrategy(LeanServerStrategy):
    """``LeanServerStrategy(role="runner")`` that stops when the store is gone and says why.

    After :meth:`execute` returns, :attr:`watch_reason` is the store watch's reason, if it stopped
    the runners.
    """

    def __init__(self, *args: Any, gone_after_s: float = _DEFAULT_GONE_AFTER_S, **kwargs: Any) -> None:
        super().__init__(*args, role="runner", **kwargs)
        self.gone_after_s = gone_after_s
        self.watch_reason: str | None = None

    def _spawn_runners(
        self, runner: Any, store: LightningStore, stop_evt: ExecutionEvent, *, ctx: BaseContext
    ) -> list[multiprocessing.Process]:
        with self._watching(stop_evt):
            return super()._spawn_runners(runner, store, stop_evt, ctx=ctx)

    async def _execute_runner(
        self, runner: Any, worker_id: int, store: LightningStore, stop_evt: ExecutionEvent
    ) -> None:
        logging.getLogger(STORE_CLIENT_LOGGER).addFilter(_FirstStoreClientMessage(self.gone_after_s))
        if multiprocessing.parent_process() is not None:
            await super()._execute_runner(runner, worker_id, store, stop_evt)
            return
        # n_runners=1: Agent-lightning runs the one runner in this process, without _spawn_runners
        with self._watching(stop_evt):
            await super()._execute_runner(runner, worker_id, store, stop_evt)

    @contextlib.contextmanager
    def _watching(self, stop_evt: ExecutionEvent) -> Iterator[None]:
        watch = StoreWatch(f"http://{self.server_host}:{self.server_port}", stop_evt, self.gone_after_s)
        watch.start()
        try:
            yield
        finally:
            watch.stop()
            self.watch_reason = watch.reason


def run_split_runners(
    agent: agl.LitAgent[Any],
    store_url: str,
    n_runners: int,
    label: str,
    *,
    every: int = 20,
    verbose: bool = False,
    gone_after_s: float = _DEFAULT_GONE_AFTER_S,
) -> RunnersStopped:
    """Run ``agent`` in ``n_runners`` processes for whatever algorithm feeds the store at
    ``store_url`` until Ctrl-C, the store goes away, or the processes end; say progress under
    ``label`` (see the module docstring) and return why it stopped."""
    host_port = store_url.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.partition(":")
    progress = ProgressPrinter(label, every=every, verbose=verbose)
    strategy = SplitRunnerStrategy(
        n_runners=n_runners,
        server_host=host,
        server_port=int(port or SPLIT_STORE_PORT),
        gone_after_s=gone_after_s,
    )
    trainer = agl.Trainer(
        n_runners=n_runners, runner=fast_runner(on_finished=progress.sender), strategy=strategy
    )
    progress.start()
    try:
        with interrupt_watch() as interrupted:
            trainer.fit(agent)
    finally:
        progress.stop()
    if interrupted:  # Agent-lightning stopped the runner processes and swallowed the Ctrl-C
        return RunnersStopped("interrupted (Ctrl-C)", progress.total(), interrupted=True)
    if strategy.watch_reason is not None:
        return RunnersStopped(strategy.watch_reason, progress.total())
    return RunnersStopped("its runner processes ended (any errors are above)", progress.total())
