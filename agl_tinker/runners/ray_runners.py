"""Runners as Ray actors: the agent runs on a Ray cluster, the store and endpoint stay here.

:class:`RayRunnerStrategy` is an Agent-lightning execution strategy. Like
:class:`~agl_tinker.algorithm.LeanServerStrategy` in one-command mode, it serves the store
(a :class:`~agl_tinker.store_server.LeanStoreServer`) and runs the algorithm (and so the policy
endpoint) in this process; the runners are Ray actors placed on the cluster instead of processes
forked here. Each actor runs the trainer's runner (``fast_runner()``: deadline, tracing) on the
user's agent, unchanged, against the store over HTTP, and checks the store's run id first, as a
forked runner does.

Faults: an actor that dies (its process killed, its node gone) is reported by Ray to
:class:`_ActorPool`, which

1. records the death (``events``, ``stats``) and logs it;
2. marks the attempt the store last saw that runner slot on ``unresponsive``, so the store's
   ``RolloutConfig`` retries the rollout (``max_attempts`` > 1) or ends it, now, never silently;
3. places a replacement actor (same worker id) wherever the cluster has room, up to
   ``max_restarts`` times per slot; one more death stops the run with :class:`RunnersLost`.

Use it as any strategy: ``agl.Trainer(algorithm=..., runner=fast_runner(),
strategy=RayRunnerStrategy(RayRunnerSettings(address="10.0.0.5:6379", n_runners=8)))``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import threading
import time
from collections import Counter
from typing import Any

import agentlightning as agl
from agentlightning.execution.base import AlgorithmBundle, RunnerBundle
from agentlightning.execution.events import ExecutionEvent, ThreadingEvent
from agentlightning.store.base import LightningStore

from agl_tinker.algorithm import LeanServerStrategy
from agl_tinker.loop.errors import TrainingAborted
from agl_tinker.runners.ray_actor import RunnerActor, RunnerParts
from agl_tinker.runners.ray_cluster import RayRunnerSettings, connect
from agl_tinker.runners.supervise import DEATHS, RESTARTS, ROLLOUTS_GIVEN_UP, give_up_current_attempt

__all__ = ["RayRunnerStrategy", "RunnerParts", "RunnersLost", "runner_parts"]

logger = logging.getLogger(__name__)

_WATCH_S = 0.5  # how often the actor watch also looks at the stop event
_START_S = 300.0  # how long the actors of a run may take to start (imports on a busy node)


class RunnersLost(TrainingAborted):
    """A runner slot's actor died more than ``max_restarts`` times: the run stops."""


def runner_parts(bundle: RunnerBundle) -> RunnerParts:
    """The agent, runner and hooks of the runner bundle ``agl.Trainer.fit`` hands a strategy."""
    if isinstance(bundle, RunnerParts):
        return bundle
    trainer = getattr(getattr(bundle, "func", None), "__self__", None)
    agent = getattr(bundle, "keywords", {}).get("agent") if isinstance(bundle, functools.partial) else None
    if not isinstance(trainer, agl.Trainer) or not isinstance(agent, agl.LitAgent):
        raise TypeError(
            "RayRunnerStrategy runs an agl.Trainer's runner: use agl.Trainer(strategy=...).fit(agent, ...)"
        )
    return RunnerParts(_detached(agent), trainer.runner, tuple(trainer.hooks))


def _detached(agent: agl.LitAgent[Any]) -> agl.LitAgent[Any]:
    """A copy of ``agent`` without its weak references to this process's trainer and runner.

    ``Trainer.fit`` gives the agent a weak reference to the trainer (weak references cannot be
    pickled, and that trainer stays here); the actor's runner gives the copy its own runner.
    """
    clone = copy.copy(agent)
    clone._trainer_ref = None
    clone._runner_ref = None
    return clone


class _ActorPool:
    """The runner actors of one run: placed, watched (a thread), replaced, stopped."""

    def __init__(
        self,
        ray: Any,
        store_public_url: str,
        run_id: str,
        parts: RunnerParts,
        settings: RayRunnerSettings,
        stop_evt: ExecutionEvent,
        store_url: str,
        events: list[dict[str, Any]],
        stats: Counter[str],
        started_at: float,
    ) -> None:
        self._ray = ray
        self._remote = ray.remote(RunnerActor).options(**settings.actor_options())
        self._public_url = store_public_url
        self._run_id = run_id
        self._parts_ref = ray.put(parts)
        self._settings = settings
        self._stop_evt = stop_evt
        self._store_url = store_url
        self._actors: dict[int, Any] = {}
        self._runs: dict[Any, int] = {}
        self._starting: dict[Any, int] = {}  # a replacement's node() call -> its worker id
        self._restarts: Counter[int] = Counter()
        self._started = started_at
        self.events = events
        self.stats = stats
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ray-runner-watch", daemon=True)

    def start(self, timeout_s: float) -> None:
        """Place every actor and wait until each has started (imports done), then watch them.

        Raises :class:`RunnersLost` when they have not all started within ``timeout_s`` (the
        cluster lacks the resources, or their nodes cannot start them).
        """
        for worker_id in range(self._settings.n_actors):
            self._place(worker_id)
        nodes = {w: a.node.remote() for w, a in self._actors.items()}
        _, pending = self._ray.wait(list(nodes.values()), num_returns=len(nodes), timeout=timeout_s)
        if pending:
            raise RunnersLost(
                f"{len(pending)} of {len(nodes)} runner actors did not start within {timeout_s:.0f}s: does the "
                f"cluster have {self._settings.actor_options()} free per actor? ({self._ray.available_resources()})"
            )
        for worker_id, ref in nodes.items():
            self._note("started", worker_id, node=self._ray.get(ref)[:8])
        self._thread.start()

    def _note(self, event: str, worker_id: int, **detail: Any) -> None:
        self.events.append(
            {"t": round(time.monotonic() - self._started, 3), "event": event, "worker": worker_id, **detail}
        )

    def _place(self, worker_id: int) -> None:
        actor = self._remote.remote(self._public_url, self._run_id, self._parts_ref, worker_id)
        self._actors[worker_id] = actor
        self._runs[actor.run.remote()] = worker_id
        self._note("placed", worker_id)

    def _watch(self) -> None:
        while not self._stop_evt.is_set():
            watched = [*self._runs, *self._starting]
            if not watched:  # every slot given up: the run is stopping
                self._stop_evt.wait(_WATCH_S)
                continue
            ready, _ = self._ray.wait(watched, num_returns=1, timeout=_WATCH_S)
            for ref in ready:
                if ref in self._starting:
                    self._note("started", self._starting.pop(ref), node=self._node_of(ref))
                    continue
                worker_id = self._runs.pop(ref)
                try:
                    self._ray.get(ref)
                    if not self._stop_evt.is_set():
                        self._died(worker_id, "its runner loop ended on its own")
                except Exception as e:
                    if not self._stop_evt.is_set():
                        self._died(worker_id, _first_line(e))
        self._tell_actors_to_stop()

    def _node_of(self, ref: Any) -> str:
        try:
            return str(self._ray.get(ref))[:8]
        except Exception:  # it died before answering: its run reports that
            return "?"

    def _died(self, worker_id: int, reason: str) -> None:
        self.stats[DEATHS] += 1
        self._note("died", worker_id, reason=reason)
        logger.error("runner actor %d died while the run was going: %s", worker_id, reason)
        rollout_id = self._give_up(worker_id)
        if rollout_id is not None:
            self.stats[ROLLOUTS_GIVEN_UP] += 1
            self._note("rollout_given_up", worker_id, rollout_id=rollout_id)
        if self._restarts[worker_id] >= self._settings.max_restarts:
            logger.error(
                "runner actor %d died %d times: not replacing it again; stopping the run",
                worker_id,
                self._restarts[worker_id] + 1,
            )
            self.lost.set()
            self._stop_evt.set()
            return
        self._restarts[worker_id] += 1
        self.stats[RESTARTS] += 1
        self._place(worker_id)
        logger.warning("runner actor %d replaced (restart %d)", worker_id, self._restarts[worker_id])
        self._starting[self._actors[worker_id].node.remote()] = worker_id  # noted once it answers

    def _give_up(self, worker_id: int) -> str | None:
        """Mark the attempt the dead slot held ``unresponsive``: the store retries or ends it now."""
        try:
            return asyncio.run(give_up_current_attempt(self._store_url, worker_id))
        except Exception as e:  # the store's watchdog still times the attempt out
            logger.warning("could not give up the rollout of dead runner actor %d: %s", worker_id, e)
            return None

    def _tell_actors_to_stop(self) -> None:
        for actor in self._actors.values():
            try:
                actor.stop.remote()
            except Exception as e:
                logger.debug("could not tell a runner actor to stop: %s", e)

    def stop(self, timeout_s: float) -> None:
        """Ask every actor to stop, wait up to ``timeout_s`` for them, then kill what is left."""
        self._stop_evt.set()
        if self._thread.ident is not None:  # started: not when the actors never started
            self._thread.join()
        if self._runs:
            self._ray.wait(list(self._runs), num_returns=len(self._runs), timeout=timeout_s)
        for actor in self._actors.values():
            self._ray.kill(actor)
        self.lost.set()  # releases whoever waits on it


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


class RayRunnerStrategy(LeanServerStrategy):
    """Store server and algorithm in this process; runners as actors on a Ray cluster.

    ``server_host``/``server_port`` are where the store binds (``127.0.0.1`` and a free port by
    default: right for a local cluster; for remote nodes bind ``0.0.0.0`` and set
    ``settings.store_public_host``). After ``fit``, ``stats`` counts deaths, restarts and
    rollouts given up, and ``events`` is the timeline of actor placements and deaths (both
    are filled while the run goes).
    """

    def __init__(
        self,
        settings: RayRunnerSettings | None = None,
        *,
        server_host: str = "127.0.0.1",
        server_port: int | None = None,
        graceful_timeout: float = 10.0,
    ) -> None:
        self.settings = settings or RayRunnerSettings()
        super().__init__(
            role="both",
            server_host=server_host,
            server_port=server_port,
            n_runners=self.settings.n_actors,
            graceful_timeout=graceful_timeout,
        )
        self.events: list[dict[str, Any]] = []
        self.created_at = time.monotonic()
        """``time.monotonic()`` when this strategy was made: the zero of ``events``' ``t``."""

    def execute(self, algorithm: AlgorithmBundle, runner: RunnerBundle, store: LightningStore) -> None:
        parts = runner_parts(runner)
        ray, started = connect(self.settings)  # ClusterUnreachable before any server or actor starts
        stop_evt = ThreadingEvent()
        store_url = f"http://{self.server_host}:{self.server_port}"
        public_url = f"http://{self.settings.store_public_host or self.server_host}:{self.server_port}"
        pool = _ActorPool(
            ray,
            public_url,
            self.run_id,
            parts,
            self.settings,
            stop_evt,
            store_url,
            self.events,
            self.stats,
            self.created_at,
        )
        try:
            pool.start(_START_S)
            asyncio.run(self._algorithm_while_runners_live(algorithm, store, stop_evt, pool))
        except KeyboardInterrupt:
            logger.warning(
                "KeyboardInterrupt received; stopping the runner actors"
            )  # as Agent-lightning's strategies do
        finally:
            stop_evt.set()
            pool.stop(self.graceful_timeout)
            if started:
                ray.shutdown()

    async def _algorithm_while_runners_live(
        self, algorithm: AlgorithmBundle, store: LightningStore, stop_evt: ExecutionEvent, pool: _ActorPool
    ) -> None:
        run = asyncio.create_task(self._execute_algorithm(algorithm, store, stop_evt))
        lost = asyncio.create_task(asyncio.to_thread(pool.lost.wait))
        done, _ = await asyncio.wait({run, lost}, return_when=asyncio.FIRST_COMPLETED)
        if run in done:
            pool.lost.set()  # ends the waiting thread
            await lost
            return run.result()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        raise RunnersLost(
            f"a runner actor died more than max_restarts={self.settings.max_restarts} times; "
            "see the log for where and why"
        )
