"""Runner processes that die are reported and replaced, and their rollout is given up at once.

Agent-lightning 0.3.0's ``ClientServerExecutionStrategy`` starts its runner processes and only
looks at them again at shutdown: a runner killed mid-run (SIGKILL, the OOM killer) silently left
the run with one runner fewer, and its rollout sat ``running`` in the store until the store's
watchdog timed it out (``rollout_timeout_s`` later). :class:`RunnerSupervisor` waits on the
processes' sentinels (no polling), and when one ends while the run is going it

1. logs an error naming the runner, its pid and exit code;
2. marks the attempt the store last saw that runner on (its ``Worker`` record) ``unresponsive``,
   so the rollout is retried or excluded now instead of at its timeout;
3. starts a replacement with the same worker id, in the same slot of the launcher's process list
   (so Agent-lightning's shutdown and exit-code check see the replacement, not the dead one).

A runner that keeps dying (``max_deaths`` within ``window_s``) is not replaced again: the
supervisor stops the run, loudly, instead of restarting a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, MutableSequence

from agentlightning.execution.events import ExecutionEvent
from agentlightning.store.client_server import LightningStoreClient

__all__ = [
    "DEATHS",
    "RESTARTS",
    "ROLLOUTS_GIVEN_UP",
    "RunnerSupervisor",
    "give_up_current_attempt",
    "runner_worker_id",
]

logger = logging.getLogger(__name__)

# The keys of a strategy's runner-fault counts (``LeanServerStrategy.stats``), one place for each.
DEATHS = "runners/deaths"
"""Runners (processes or Ray actors) that died while the run was going."""
RESTARTS = "runners/restarts"
"""Dead runners replaced by a new one; each training step's metrics row carries the step's count."""
ROLLOUTS_GIVEN_UP = "runners/rollouts_given_up"
"""Attempts of dead runners marked ``unresponsive`` (the store retries or ends the rollout)."""

_WAKE_S = 0.5  # how often the wait on the sentinels also looks at the stop event
_STORE_CALL_S = 10.0


def runner_worker_id(worker: int) -> str:
    """The id runner ``worker`` carries in the store: ``LitAgentRunner.get_worker_id``'s format."""
    return f"Worker-{worker}"


async def give_up_current_attempt(store_url: str, worker: int) -> str | None:
    """Mark the attempt runner ``worker`` was running ``unresponsive``; the rollout id, or ``None``.

    Reads the store's ``Worker`` record (:func:`runner_worker_id`); does nothing when it shows no
    attempt in progress.
    """
    client = LightningStoreClient(store_url)
    try:
        async with asyncio.timeout(_STORE_CALL_S):
            record = await client.get_worker_by_id(runner_worker_id(worker))
            if record is None or not record.current_rollout_id or not record.current_attempt_id:
                return None
            rollout_id, attempt_id = record.current_rollout_id, record.current_attempt_id
            attempts = await client.query_attempts(rollout_id)
            current = next((a for a in attempts if a.attempt_id == attempt_id), None)
            if current is None or current.status not in ("preparing", "running"):
                return None
            await client.update_attempt(rollout_id, attempt_id, status="unresponsive")
            return rollout_id
    finally:
        await client.close()


class RunnerSupervisor:
    """Watches runner processes; reports, gives up the rollout of, and replaces one that dies.

    ``processes[i]`` runs worker ``i``; ``spawn(i)`` starts a new process for it. The list is
    updated in place. Runs in a thread (:meth:`start`) or in the caller (:meth:`run`) until
    ``stop_evt`` is set. ``stats`` (a new counter when not given) counts :data:`DEATHS`,
    :data:`RESTARTS` and :data:`ROLLOUTS_GIVEN_UP` as they happen.
    """

    def __init__(
        self,
        processes: MutableSequence[multiprocessing.Process],
        spawn: Callable[[int], multiprocessing.Process],
        stop_evt: ExecutionEvent,
        store_url: str | None,
        *,
        max_deaths: int = 3,
        window_s: float = 60.0,
        stats: Counter[str] | None = None,
    ) -> None:
        self.processes = processes
        self.spawn = spawn
        self.stop_evt = stop_evt
        self.store_url = store_url
        self.max_deaths = max_deaths
        self.window_s = window_s
        self.stats: Counter[str] = Counter() if stats is None else stats
        self._deaths: dict[int, deque[float]] = defaultdict(deque)
        self._thread: threading.Thread | None = None

    @property
    def replaced(self) -> int:
        """Dead processes replaced so far."""
        return self.stats[RESTARTS]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="runner-supervisor", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Watch until the stop event is set (or every runner has ended on its own, exit code 0)."""
        retired: set[int] = set()
        while not self.stop_evt.is_set():
            by_sentinel = {p.sentinel: i for i, p in enumerate(self.processes) if i not in retired}
            if not by_sentinel:
                return
            for sentinel in multiprocessing.connection.wait(list(by_sentinel), timeout=_WAKE_S):
                if self.stop_evt.is_set():
                    return
                worker = by_sentinel[sentinel]  # type: ignore[index]
                # its sentinel fired, so it has ended: join reaps it, so its exit code is set
                self.processes[worker].join(5.0)
                if self.processes[worker].exitcode == 0:
                    retired.add(worker)  # finished its work (max_rollouts): not a death
                else:
                    self._handle_death(worker)

    def _handle_death(self, worker: int) -> None:
        dead = self.processes[worker]
        logger.error(
            "runner process %s (pid %s) died with exit code %s while the run was going",
            dead.name,
            dead.pid,
            dead.exitcode,
        )
        self.stats[DEATHS] += 1
        self._give_up_rollout(worker)
        if self._keeps_dying(worker):
            logger.error(
                "runner %d died %d times within %.0fs: not replacing it again; stopping the run",
                worker,
                self.max_deaths,
                self.window_s,
            )
            self.stop_evt.set()
            return
        self.processes[worker] = self.spawn(worker)
        self.stats[RESTARTS] += 1
        logger.warning("runner %d replaced by a new process (pid %s)", worker, self.processes[worker].pid)

    def _keeps_dying(self, worker: int) -> bool:
        now = time.monotonic()
        deaths = self._deaths[worker]
        deaths.append(now)
        while deaths and now - deaths[0] > self.window_s:
            deaths.popleft()
        return len(deaths) >= self.max_deaths

    def _give_up_rollout(self, worker: int) -> None:
        if self.store_url is None:
            return
        try:
            rollout_id = asyncio.run(give_up_current_attempt(self.store_url, worker))
        except Exception as e:  # the store's watchdog still times the rollout out
            logger.warning("could not give up the rollout of dead runner %d: %s", worker, e)
            return
        if rollout_id is not None:
            self.stats[ROLLOUTS_GIVEN_UP] += 1
            logger.warning("rollout %s of dead runner %d marked unresponsive", rollout_id, worker)
