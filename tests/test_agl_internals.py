"""agl_tinker.agl_internals: the private Agent-lightning attributes are where each function expects them.

These fail first when an Agent-lightning upgrade moves one, naming the function to revisit.
"""

from __future__ import annotations

import multiprocessing

from agentlightning.store.client_server import LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore

from agl_tinker.agl_internals import (
    forget_rollout_bookkeeping,
    memory_store_completion_events,
    server_store_is_here,
)
from agl_tinker.net import free_port


async def test_completion_events_are_the_store_s_own_per_rollout_events() -> None:
    store = InMemoryLightningStore()
    rollout = await store.enqueue_rollout(input={"x": 1})
    events = memory_store_completion_events(store)
    assert events is not None and rollout.rollout_id in events
    forget_rollout_bookkeeping(store, rollout.rollout_id)
    assert rollout.rollout_id not in events


def _report_here(server: LightningStoreServer, answers: multiprocessing.SimpleQueue[bool]) -> None:
    answers.put(server_store_is_here(server))


def test_a_server_holds_its_store_in_the_process_that_made_it_only() -> None:
    server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=free_port())
    assert server_store_is_here(server)
    ctx = multiprocessing.get_context("fork")
    answers: multiprocessing.SimpleQueue[bool] = ctx.SimpleQueue()
    child = ctx.Process(target=_report_here, args=(server, answers))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert answers.get() is False  # a forked runner's copy forwards over HTTP
