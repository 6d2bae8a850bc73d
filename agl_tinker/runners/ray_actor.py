"""What runs inside a Ray runner actor: the trainer's runner on the user's agent, against the store.

Kept light (Agent-lightning and this package's runner pieces, not the training loop): each actor
process imports this module, on a busy node for seconds per import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import agentlightning as agl
from agentlightning.execution.events import ExecutionEvent, ThreadingEvent
from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import LightningStoreClient

from agl_tinker.runners.store_wait import wait_for_store
from agl_tinker.runners.tracing import repair_store_otlp_export

__all__ = ["RunnerActor", "RunnerParts"]

# Runner tracers must reach the store, not an OTLP collector at localhost:4318 (see tracing.py).
repair_store_otlp_export()


@dataclasses.dataclass
class RunnerParts:
    """What an actor needs to run the trainer's runner: the agent, the runner, the hooks.

    The trainer's own runner bundle cannot travel to another machine: it is a method of the
    trainer, which holds the algorithm and its in-memory store. Calling this does what
    ``Trainer``'s runner bundle does, with the same public ``Runner`` calls.
    """

    agent: agl.LitAgent[Any]
    runner: agl.Runner[Any]
    hooks: Sequence[agl.Hook] = ()

    async def __call__(self, store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        self.runner.init(agent=self.agent, hooks=list(self.hooks))
        try:
            self.runner.init_worker(worker_id, store)
            try:
                await self.runner.iter(event=event)
            finally:
                self.runner.teardown_worker(worker_id)
        finally:
            self.runner.teardown()


class RunnerActor:
    """One runner slot: the runner loop of ``worker_id`` in an actor process (``ray.remote``'d).

    :meth:`run` does what a forked runner process does: wait for the store at ``store_url`` to
    answer, check it announces ``run_id`` (else :class:`~agl_tinker.runners.store_wait.StoreOfAnotherRun`),
    then run rollouts through an HTTP store client until :meth:`stop`.
    """

    def __init__(self, store_url: str, run_id: str, parts: RunnerParts, worker_id: int) -> None:
        self._store_url = store_url
        self._run_id = run_id
        self._parts = parts
        self._worker_id = worker_id
        self._stop = ThreadingEvent()

    async def run(self) -> int:
        """Run rollouts until :meth:`stop`; the worker id. Ends early if the store never answered."""
        if not await wait_for_store(self._store_url, self._stop, run_id=self._run_id):
            return self._worker_id
        store = LightningStoreClient(self._store_url)
        try:
            await self._parts(store, self._worker_id, self._stop)
        finally:
            await store.close()
        return self._worker_id

    async def stop(self) -> None:
        """Finish the rollout in progress (its deadline still applies), then end :meth:`run`."""
        self._stop.set()

    async def node(self) -> str:
        """The id of the Ray node this actor runs on (answered once the actor has started)."""
        import ray  # in the actor process, which Ray itself started

        return str(ray.get_runtime_context().get_node_id())
