"""The execution strategy :func:`~agl_tinker.algorithm.fit.fit` runs under: Agent-lightning's
client-server strategy with a lean store server on a port of its own, supervised runner processes,
and runners that stop when their run's process is gone."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing as mp
import os
import secrets
import signal
from multiprocessing.context import BaseContext
from typing import Any, cast

from agentlightning.execution.client_server import ClientServerExecutionStrategy
from agentlightning.execution.events import ExecutionEvent
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import API_V1_AGL_PREFIX
from agentlightning.utils.server_launcher import PythonServerLauncherArgs

from agl_tinker.net import free_port
from agl_tinker.runners.store_wait import StoreOfAnotherRun, wait_for_store
from agl_tinker.runners.supervise import RunnerSupervisor
from agl_tinker.store_server import LeanStoreServer

__all__ = ["LeanServerStrategy", "store_launcher_args"]

logger = logging.getLogger(__name__)

_RUNNER_DRAIN_S = 0.3
_ORPHAN_CHECK_S = 0.5
_ORPHAN_GRACE_S = 5.0


class LeanServerStrategy(ClientServerExecutionStrategy):
    """``ClientServerExecutionStrategy`` whose managed store server is a :class:`LeanStoreServer`,
    on a port of its own, serving only the runners it started.

    Same roles, processes and shutdown as Agent-lightning's strategy. What differs:

    - the server: same HTTP API, a fraction of the CPU per request;
    - the port: without ``server_port`` (and ``AGL_SERVER_PORT``) a free one, not Agent-lightning's
      fixed 4747, so two runs on one machine never meet at one store;
    - in ``role="both"`` (one command: server, algorithm and runners), each run has a ``run_id``
      its server announces; a runner process checks it before taking any rollout and stops with
      :class:`StoreOfAnotherRun` when it reached another run's store (a port taken meanwhile).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("server_port", args[2] if len(args) > 2 else None)  # (role, host, port, ...)
        fixed = given is not None or os.environ.get("AGL_SERVER_PORT")
        super().__init__(*args, **kwargs)
        if not fixed:
            self.server_port = free_port(_bind_host(self.server_host))
        self.run_id = secrets.token_hex(8)

    def _spawn_runners(
        self, runner: Any, store: LightningStore, stop_evt: ExecutionEvent, *, ctx: BaseContext
    ) -> list[multiprocessing.Process]:
        """Agent-lightning's runner processes, watched by a :class:`RunnerSupervisor` that reports,
        gives up the rollout of, and replaces one that dies.

        In ``role="both"`` the supervisor is a thread beside the algorithm; in ``role="runner"``
        (split mode) this launcher has nothing else to do, so it supervises here until the run
        stops, then returns the processes for Agent-lightning's shutdown.
        """

        def spawn(worker_id: int) -> multiprocessing.Process:
            process = ctx.Process(  # type: ignore[attr-defined]
                target=_runner_process,
                args=(self, runner, worker_id, store, stop_evt),
                name=f"runner-{worker_id}",
            )
            process.start()
            return cast(multiprocessing.Process, process)

        processes = [spawn(i) for i in range(self.n_runners)]
        store_url = f"http://{self.server_host}:{self.server_port}" if self.managed_store else None
        supervisor = RunnerSupervisor(processes, spawn, stop_evt, store_url)
        if self.role != "runner":
            supervisor.start()
            return processes
        try:
            supervisor.run()
        except KeyboardInterrupt:
            self._shutdown_processes(processes, stop_evt)
            raise
        return processes

    async def _execute_algorithm(
        self, algorithm: Any, store: LightningStore, stop_evt: ExecutionEvent
    ) -> None:
        if not self.managed_store:
            await super()._execute_algorithm(algorithm, store, stop_evt)
            return
        server = LeanStoreServer(
            store, launcher_args=store_launcher_args(self.server_host, self.server_port), run_id=self.run_id
        )
        await server.start()
        try:
            await algorithm(server, stop_evt)
        except BaseException:
            logger.exception("Algorithm bundle stopped with an error; signaling stop event")
            raise
        finally:
            # Agent-lightning tells its runners to stop only once this returns, after the server
            # is gone, so idle runners log "Cannot connect" while they notice. Tell them first and
            # let them finish their last poll (they check the event every 0.1 s).
            stop_evt.set()
            if self.role == "both":
                await asyncio.sleep(_RUNNER_DRAIN_S)  # ok: a bounded grace before the server stops
            await server.stop()

    async def _execute_runner(
        self, runner: Any, worker_id: int, store: LightningStore, stop_evt: ExecutionEvent
    ) -> None:
        # A runner process outlives a training process that was killed (SIGKILL, OOM) and would
        # poll a store that is gone forever: watch for that (from the start) and stop.
        watch = asyncio.create_task(_stop_when_orphaned(stop_evt)) if mp.parent_process() else None
        if mp.parent_process() is not None:
            # A terminal's Ctrl-C reaches the whole process group; the process that started this
            # runner stops it through stop_evt (then SIGTERM), so it has nothing to say here.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # Runner processes start while the algorithm is still importing and starting the
            # server; Agent-lightning's client then logs "Server is not healthy yet" warnings
            # until it is up. Wait for it quietly first (its health route).
            if self.managed_store:
                own_run = self.run_id if self.role == "both" else None
                try:
                    await wait_for_store(
                        f"http://{self.server_host}:{self.server_port}", stop_evt, run_id=own_run
                    )
                except StoreOfAnotherRun:
                    logger.exception("runner %d stops: it was not started for this store's run", worker_id)
                    stop_evt.set()  # this run's own server is not where it should be: stop the run, loudly
                    raise
            await super()._execute_runner(runner, worker_id, store, stop_evt)
        finally:
            if watch is not None:
                watch.cancel()


def _runner_process(
    strategy: LeanServerStrategy, runner: Any, worker_id: int, store: LightningStore, stop_evt: ExecutionEvent
) -> None:
    """A runner process's body: what Agent-lightning's own runner processes run."""
    try:
        asyncio.run(strategy._execute_runner(runner, worker_id, store, stop_evt))
    except KeyboardInterrupt:
        logger.warning("runner %d received KeyboardInterrupt; exiting", worker_id)
    except BaseException:
        logger.exception("runner %d crashed; signaling stop event", worker_id)
        raise


def store_launcher_args(host: str, port: int) -> PythonServerLauncherArgs:
    """How a store server is started: as ``LightningStoreServer(host=, port=)`` does, but quiet.

    The address runners use is the bound one (no "No access host provided" warning), and uvicorn
    logs its start and stop lines only when INFO logging is on (``agl-tinker -v``).
    """
    return PythonServerLauncherArgs(
        host=host,
        port=port,
        access_host=host,
        launch_mode="thread",
        healthcheck_url=API_V1_AGL_PREFIX + "/health",
        log_level=logging.INFO if logging.getLogger().isEnabledFor(logging.INFO) else logging.WARNING,
    )


async def _stop_when_orphaned(stop_evt: ExecutionEvent) -> None:
    """Stop this runner process (gracefully, then for good) once the process that forked it is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(_ORPHAN_CHECK_S)  # ok: no event tells a child that its parent died
    logger.warning("runner process %d: the process that started it is gone; stopping", os.getpid())
    stop_evt.set()
    await asyncio.sleep(_ORPHAN_GRACE_S)  # ok: time for the current rollout to end before exiting
    os._exit(1)


def _bind_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host
