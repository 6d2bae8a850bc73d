"""``agl-tinker store``: the split-mode store server, quiet by default, saying which runners come and go.

What it prints (stdout, one line each): nothing but the lines :class:`RunnerPresence` writes, a
runner connecting and a runner leaving; the CLI adds the URL and the stop. Errors are logged as
usual; uvicorn's and Agent-lightning's start/stop chatter only with ``-v``.

**A runner** is one Agent-lightning worker: a runner process, known to the store by the
``worker_id`` its calls carry (``Worker-<n>``). Agent-lightning 0.3.0's runners send it with every
``dequeue_rollout`` (polled while idle), every ``start_attempt`` and every heartbeat
(``update_worker``, every 10 s by default, also while a rollout runs). **Connecting** is the first
such call; **leaving** is :attr:`RunnerPresence.leave_after_s` without one (a runner process has no
goodbye call: a stopped, killed or cut-off runner looks the same). Worker ids are numbered per
runner command, so two runner commands on one store share ``Worker-0``: the store sees them as one
runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.utils.server_launcher import PythonServerLauncherArgs

from agl_tinker.net import SPLIT_STORE_PORT
from agl_tinker.store_server import LeanStoreServer

__all__ = ["DEFAULT_LEAVE_AFTER_S", "PresenceStoreServer", "RunnerPresence", "serve_store"]

DEFAULT_LEAVE_AFTER_S = 30.0
"""Silence after which a runner counts as gone: three of Agent-lightning's 10 s heartbeats."""
_SWEEP_S = 1.0


class RunnerPresence:
    """Which runners (worker ids) the store has heard from lately; says when one comes or goes.

    ``seen(worker_id)`` on every call that carries a worker id; ``sweep()`` now and then. Each
    arrival and each departure is said once, through ``say`` (``print`` by default).
    """

    def __init__(
        self,
        leave_after_s: float = DEFAULT_LEAVE_AFTER_S,
        say: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if leave_after_s <= 0:
            raise ValueError(f"leave_after_s must be > 0, got {leave_after_s}")
        self.leave_after_s = leave_after_s
        self._say = say or (lambda line: print(line, flush=True))
        self._clock = clock
        self._last: dict[str, float] = {}

    @property
    def present(self) -> list[str]:
        """The runners heard from within ``leave_after_s`` (as of the last sweep), in arrival order."""
        return list(self._last)

    def seen(self, worker_id: str | None) -> None:
        if not worker_id:
            return
        if worker_id not in self._last:
            self._say(f"agl-tinker store: runner {worker_id} connected")
        self._last[worker_id] = self._clock()

    def sweep(self) -> None:
        now = self._clock()
        for worker_id, last in list(self._last.items()):
            if now - last >= self.leave_after_s:
                del self._last[worker_id]
                self._say(
                    f"agl-tinker store: runner {worker_id} left (nothing heard from it for {now - last:.0f} s)"
                )


class PresenceStoreServer(LeanStoreServer):
    """:class:`LeanStoreServer` that reports the worker id of each runner call to a :class:`RunnerPresence`.

    The routes call these store methods on the server; each override notes the caller and then
    does exactly what the parent does.
    """

    def __init__(self, *args: Any, presence: RunnerPresence, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.presence = presence

    async def dequeue_rollout(self, worker_id: str | None = None) -> Any:
        self.presence.seen(worker_id)
        return await super().dequeue_rollout(worker_id=worker_id)

    async def dequeue_many_rollouts(self, *, limit: int = 1, worker_id: str | None = None) -> Any:
        self.presence.seen(worker_id)
        return await super().dequeue_many_rollouts(limit=limit, worker_id=worker_id)

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> Any:
        self.presence.seen(worker_id)
        return await super().start_attempt(rollout_id, worker_id=worker_id)

    async def update_worker(self, worker_id: str, *args: Any, **kwargs: Any) -> Any:
        self.presence.seen(worker_id)
        return await super().update_worker(worker_id, *args, **kwargs)


async def serve_store(
    host: str = "127.0.0.1",
    port: int = SPLIT_STORE_PORT,
    cors_origins: list[str] | None = None,
    presence: RunnerPresence | None = None,
) -> None:
    """Serve a fresh in-memory store until cancelled (what ``agl-tinker store`` runs).

    Quiet unless INFO logging is on (``agl-tinker -v``): uvicorn's start and stop lines and
    Agent-lightning's "no access host" warning are left out; errors are still logged. Runners
    connecting and leaving are said through ``presence`` (a default :class:`RunnerPresence`).
    """
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    launcher_args = PythonServerLauncherArgs(
        host=host,
        port=port,
        access_host=host,
        launch_mode="asyncio",
        # No self health check: the launcher's gives up after its startup_timeout (60 s of wall time
        # from its start), then shuts the server down and raises. On a loaded CI machine that stopped a
        # store that was answering ("Server is not healthy ... after 60.0 s", a traceback, and no exit
        # within 60 s of the SIGINT that followed). Nothing waits on this store's start: no check.
        healthcheck_url=None,
        log_level=logging.INFO if verbose else logging.WARNING,
    )
    presence = presence or RunnerPresence()
    server = PresenceStoreServer(
        InMemoryLightningStore(thread_safe=True),
        launcher_args=launcher_args,
        cors_allow_origins=cors_origins,
        presence=presence,
    )
    sweeper = asyncio.create_task(_sweep(presence))
    try:
        await server.run_forever()
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


async def _sweep(presence: RunnerPresence) -> None:
    while True:
        await asyncio.sleep(_SWEEP_S)  # ok: departures have no event; a 1 s sweep bounds the delay
        presence.sweep()
