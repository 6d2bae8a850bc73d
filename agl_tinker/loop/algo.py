"""Agent-lightning ``Algorithm`` wrapper, so ``agl.Trainer(algorithm=...).fit(agent, ...)`` trains on Tinker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing as mp
import os
import secrets
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.context import BaseContext
from typing import Any, cast

import agentlightning as agl
from agentlightning.execution.client_server import ClientServerExecutionStrategy
from agentlightning.execution.events import ExecutionEvent
from agentlightning.runner import LitAgentRunner
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import API_V1_AGL_PREFIX
from agentlightning.tracer.agentops import AgentOpsTracer
from agentlightning.tracer.otel import OtelTracer
from agentlightning.utils.server_launcher import PythonServerLauncherArgs

from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.preflight import check_setup
from agl_tinker.loop.train import TrainResult, train
from agl_tinker.net import free_port
from agl_tinker.run.failures import summarise_failures
from agl_tinker.runners.deadline import DeadlineRunner
from agl_tinker.runners.store_wait import StoreOfAnotherRun, wait_for_store
from agl_tinker.runners.supervise import RunnerSupervisor
from agl_tinker.runners.tracing import repair_store_otlp_export
from agl_tinker.store_server import LeanStoreServer

logger = logging.getLogger(__name__)

# Runner tracers must reach the store, not an OTLP collector at localhost:4318 (see tracing.py).
repair_store_otlp_export()


class TinkerAlgorithm(agl.Algorithm):
    """Runs :func:`agl_tinker.loop.train.train` against the trainer's store.

    The trainer's runners (processes it forks, or runners elsewhere connected to its store) run
    the agent; this algorithm serves the policy to them, trains on their traces and hot-swaps the
    weights. ``result`` holds the run's :class:`TrainResult` once ``fit`` returns.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        required_fields: Sequence[str] = (),
        service: Any = None,
        show_progress: bool = True,
        on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        check_setup(config, check_service=service is None)  # fail now, before any server or runner
        self.config = config
        self.required_fields = tuple(required_fields)
        self.service = service
        self.show_progress = show_progress
        self.on_step = on_step
        self.result: TrainResult | None = None
        self.error: BaseException | None = None
        """What stopped the run, if it failed (the trainer's strategy may log it instead of raising)."""
        self._runner_stats: Mapping[str, int] = {}

    def set_trainer(self, trainer: Any) -> None:
        check_runner(trainer)
        super().set_trainer(trainer)
        strategy = getattr(trainer, "strategy", None)
        # This package's strategies count the runner faults they see; the steps report restarts.
        self._runner_stats = strategy.stats if isinstance(strategy, LeanServerStrategy) else {}

    async def run(  # type: ignore[override]
        self, train_dataset: Any = None, val_dataset: Any = None
    ) -> None:
        if train_dataset is None:
            raise ValueError("TinkerAlgorithm needs a train_dataset: pass it to Trainer.fit(...)")
        try:
            self.result = await train(
                self.config,
                self.get_store(),
                _as_task_source(train_dataset),
                _as_task_source(val_dataset) if val_dataset is not None else None,
                required_fields=self.required_fields,
                service=self.service,
                show_progress=self.show_progress,
                on_step=self.on_step,
                runner_stats=self._runner_stats,
            )
        except Exception as exc:
            self.error = exc
            raise


def _as_task_source(dataset: Any) -> Any:
    """A dataset as :func:`agl_tinker.loop.train.train` takes it: a file path stays a path, anything else a list."""
    return dataset if isinstance(dataset, (str, os.PathLike)) else list(dataset)


IDLE_POLLS_PER_S = 500.0
"""What the runners of one run may ask an empty queue for, in all, per second: one empty dequeue
costs the store ~0.8 ms of CPU (``docs/scaling.md``), so this is ~0.4 of a store core."""


def poll_interval_for(n_runners: int) -> float:
    """``fast_runner``'s poll interval for ``n_runners`` sharing one store: 50 ms, or longer so that
    idle runners poll at most :data:`IDLE_POLLS_PER_S` times a second in all (0.05 s up to 25
    runners, 2 s for 1000). A new batch waits up to this long for a runner to take it."""
    if n_runners < 1:
        raise ValueError(f"n_runners must be >= 1, got {n_runners}")
    return max(0.05, n_runners / IDLE_POLLS_PER_S)


def fast_runner(poll_interval: float = 0.05) -> LitAgentRunner[Any]:
    """A runner that notices new rollouts within ``poll_interval`` (Agent-lightning's default is 5 s).

    It traces with plain OpenTelemetry: the endpoint already records every LLM call with its
    tokens, so the runner only needs to capture rewards and the agent's own spans. A rollout that
    runs past its ``timeout_seconds`` is cancelled and reported ``timeout`` (see
    :class:`agl_tinker.runners.deadline.DeadlineRunner`).
    """
    summarise_failures()  # the first traceback of each distinct agent error, later ones counted
    return DeadlineRunner(OtelTracer(), poll_interval=poll_interval, interval_jitter=poll_interval / 5)


def check_runner(trainer: Any) -> None:
    """Refuse a trainer whose runners would trace with AgentOps (Agent-lightning's default tracer).

    With the pinned versions, AgentOps records an assistant tool-call message as
    ``gen_ai.prompt.N.content=None``, which Agent-lightning's ``Span`` model rejects: every rollout
    of a tool-using agent fails inside the tracer (its OTLP exporter also errors on ``_headers``).
    The endpoint records every LLM call itself, so the runner needs no LLM instrumentation:
    :func:`fast_runner` traces with plain OpenTelemetry. Raised before any rollout runs; a trainer
    that only runs the algorithm (split mode) is not checked, its runners are built elsewhere.

    A warning, not an error: an agent without tool calls (rewarding with ``agl.emit_reward`` or by
    its return value) trains under the AgentOps tracer too (``agl_tinker.runners.tracing`` delivers its
    spans to the store), and Agent-lightning's docs set runners up that way.
    """
    if getattr(getattr(trainer, "strategy", None), "role", "both") == "algorithm":
        return
    tracer = getattr(getattr(trainer, "runner", None), "tracer", None)
    if isinstance(tracer, AgentOpsTracer):
        logger.warning(
            "the trainer's runner traces with AgentOps (Agent-lightning's default): every rollout whose "
            "agent makes tool calls will fail inside its tracer, and it polls for work every 5 s; use "
            "runner=agl_tinker.loop.algo.fast_runner(). See the README, 'Runner'."
        )


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

    ``stats`` counts the runner faults it saw, as they happen (keys in
    :mod:`agl_tinker.runners.supervise`: deaths, restarts, rollouts given up); the algorithm of a
    run in this process puts each step's restarts in that step's metrics row.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("server_port", args[2] if len(args) > 2 else None)  # (role, host, port, ...)
        fixed = given is not None or os.environ.get("AGL_SERVER_PORT")
        super().__init__(*args, **kwargs)
        if not fixed:
            self.server_port = free_port(_bind_host(self.server_host))
        self.run_id = secrets.token_hex(8)
        self.stats: Counter[str] = Counter()

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
        supervisor = RunnerSupervisor(processes, spawn, stop_evt, store_url, stats=self.stats)
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


def fit(
    agent: agl.LitAgent[Any],
    config: TrainConfig,
    train_tasks: Sequence[Any],
    val_tasks: Sequence[Any] | None = None,
    *,
    n_runners: int = 2,
    required_fields: Sequence[str] = (),
    store_host: str = "127.0.0.1",
    store_port: int | None = None,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
    strategy: ClientServerExecutionStrategy | None = None,
) -> TrainResult:
    """One command: store server, this algorithm and ``n_runners`` runner processes via ``agl.Trainer``.

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
            agent, train_dataset=list(train_tasks), val_dataset=list(val_tasks) if val_tasks else None
        )
    if algorithm.error is not None:
        raise algorithm.error
    if algorithm.result is None:
        if interrupted:
            raise KeyboardInterrupt  # Agent-lightning stopped its processes and swallowed the Ctrl-C
        raise RuntimeError("training did not finish: see the log above")
    return algorithm.result


def _bind_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


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
