"""Agent-lightning ``Algorithm`` wrapper, so ``agl.Trainer(algorithm=...).fit(agent, ...)`` trains on Tinker."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import agentlightning as agl
import aiohttp
from agentlightning.execution.client_server import ClientServerExecutionStrategy
from agentlightning.execution.events import ExecutionEvent
from agentlightning.runner import LitAgentRunner
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import API_V1_AGL_PREFIX
from agentlightning.tracer.otel import OtelTracer

from agl_tinker.config import TrainConfig
from agl_tinker.store_server import LeanStoreServer
from agl_tinker.tracing import repair_store_otlp_export
from agl_tinker.train import TrainResult, train

logger = logging.getLogger(__name__)

# Runner tracers must reach the store, not an OTLP collector at localhost:4318 (see tracing.py).
repair_store_otlp_export()


class TinkerAlgorithm(agl.Algorithm):
    """Runs :func:`agl_tinker.train.train` against the trainer's store.

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
        config.validate()
        self.config = config
        self.required_fields = tuple(required_fields)
        self.service = service
        self.show_progress = show_progress
        self.on_step = on_step
        self.result: TrainResult | None = None
        self.error: BaseException | None = None
        """What stopped the run, if it failed (the trainer's strategy may log it instead of raising)."""

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
            )
        except Exception as exc:
            self.error = exc
            raise


def _as_task_source(dataset: Any) -> Any:
    """A dataset as :func:`agl_tinker.train.train` takes it: a file path stays a path, anything else a list."""
    return dataset if isinstance(dataset, (str, os.PathLike)) else list(dataset)


def fast_runner(poll_interval: float = 0.05) -> LitAgentRunner[Any]:
    """A runner that notices new rollouts within ``poll_interval`` (Agent-lightning's default is 5 s).

    It traces with plain OpenTelemetry: the endpoint already records every LLM call with its
    tokens, so the runner only needs to capture rewards and the agent's own spans.
    """
    return LitAgentRunner(OtelTracer(), poll_interval=poll_interval, interval_jitter=poll_interval / 5)


_RUNNER_DRAIN_S = 0.3
_STORE_PROBE_S = 0.1
_STORE_START_TIMEOUT_S = 120.0
_ORPHAN_CHECK_S = 0.5
_ORPHAN_GRACE_S = 5.0


class LeanServerStrategy(ClientServerExecutionStrategy):
    """``ClientServerExecutionStrategy`` whose managed store server is a :class:`LeanStoreServer`.

    Same roles, processes and shutdown as Agent-lightning's strategy; only the server the
    algorithm side starts for its runners differs (same HTTP API, a fraction of the CPU per request).
    """

    async def _execute_algorithm(
        self, algorithm: Any, store: LightningStore, stop_evt: ExecutionEvent
    ) -> None:
        if not self.managed_store:
            await super()._execute_algorithm(algorithm, store, stop_evt)
            return
        server = LeanStoreServer(store, host=self.server_host, port=self.server_port)
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
        try:
            # Runner processes start while the algorithm is still importing and starting the
            # server; Agent-lightning's client then logs "Server is not healthy yet" warnings
            # until it is up. Wait for it quietly first (its health route).
            if self.managed_store:
                await wait_for_store(f"http://{self.server_host}:{self.server_port}", stop_evt)
            await super()._execute_runner(runner, worker_id, store, stop_evt)
        finally:
            if watch is not None:
                watch.cancel()


async def _stop_when_orphaned(stop_evt: ExecutionEvent) -> None:
    """Stop this runner process (gracefully, then for good) once the process that forked it is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(_ORPHAN_CHECK_S)  # ok: no event tells a child that its parent died
    logger.warning("runner process %d: the process that started it is gone; stopping", os.getpid())
    stop_evt.set()
    await asyncio.sleep(_ORPHAN_GRACE_S)  # ok: time for the current rollout to end before exiting
    os._exit(1)


async def wait_for_store(
    endpoint: str, stop_evt: ExecutionEvent | None = None, timeout_s: float = _STORE_START_TIMEOUT_S
) -> bool:
    """Wait until the store server at ``endpoint`` answers its health check; ``False`` if it never did.

    Gives up silently after ``timeout_s`` or once ``stop_evt`` is set: whoever talks to the store
    next reports a store that is really down.
    """
    url = endpoint.rstrip("/") + API_V1_AGL_PREFIX + "/health"
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
        while time.monotonic() < deadline and not (stop_evt is not None and stop_evt.is_set()):
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return True
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(_STORE_PROBE_S)  # ok: start-up readiness probe, not completion polling
    return False


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
) -> TrainResult:
    """One command: store server, this algorithm and ``n_runners`` runner processes via ``agl.Trainer``.

    ``on_step(step, metrics)`` is called after each training step (see :func:`agl_tinker.train.train`).
    """
    algorithm = TinkerAlgorithm(config, required_fields=required_fields, on_step=on_step)
    trainer = agl.Trainer(
        algorithm=algorithm,
        n_runners=n_runners,
        runner=fast_runner(),
        strategy=LeanServerStrategy(
            n_runners=n_runners, server_host=store_host, server_port=store_port or _free_port(store_host)
        ),
    )
    trainer.fit(agent, train_dataset=list(train_tasks), val_dataset=list(val_tasks) if val_tasks else None)
    if algorithm.error is not None:
        raise algorithm.error
    if algorithm.result is None:
        raise RuntimeError("training did not finish: see the log above")
    return algorithm.result


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
