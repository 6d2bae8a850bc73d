"""Every read or write of an Agent-lightning 0.3.0 private attribute, behind a named function.

Agent-lightning 0.3.0 lacks a few public APIs this package needs. Each function below names the
missing API it stands in for; when Agent-lightning gains it, the function is the one place to
change. No other module of the package touches a private attribute of an Agent-lightning object
(subclass hooks it overrides, ``LitAgentRunner._step_impl`` and the execution strategy's
``_execute_algorithm``/``_execute_runner``, are overrides, not attribute access, and stay with
their subclasses).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore

__all__ = [
    "client_request_json",
    "drop_emptied_index_level",
    "forget_rollout_bookkeeping",
    "memory_store_completion_events",
    "server_store_is_here",
]


async def client_request_json(
    client: LightningStoreClient, method: str, path: str, *, body: Mapping[str, Any]
) -> Any:
    """POST/GET ``body`` to ``/v1/agl{path}`` through the client's own session, retries and probes.

    Missing public API: a way to call a server route the client has no method for
    (``LightningStoreClient._request_json``).

    Returns:
        The decoded JSON answer.

    Raises:
        aiohttp.ClientResponseError: the server answered with an error status (404 for an unknown
            route), after the client's own retries of 5xx answers.
    """
    return await client._request_json(method, path, json=dict(body))


def server_store_is_here(server: LightningStoreServer) -> bool:
    """Whether ``server.store`` is a live store of this process (not a forwarding shell).

    Missing public API: which process owns a ``LightningStoreServer`` (``_owner_pid``); an
    unpickled copy in a runner process keeps ``store`` but forwards every call over HTTP.
    """
    return server.store is not None and getattr(server, "_owner_pid", None) == os.getpid()


def memory_store_completion_events(store: InMemoryLightningStore) -> Mapping[str, Any] | None:
    """The in-memory store's per-rollout completion events (``aiologic.Event``), by rollout id.

    Missing public API: an async "wait for any of these rollouts" that costs no thread
    (``wait_for_rollouts`` awaits these same events through ``asyncio.to_thread``, one executor
    thread per id; ``_completion_events``). ``None`` when the store keeps no such dict.
    """
    events = getattr(store, "_completion_events", None)
    return events if isinstance(events, dict) else None


def drop_emptied_index_level(collection: Any, rollout_id: str) -> None:
    """Remove a memory collection's per-rollout index entry once its items are deleted.

    Missing public API: deleting a rollout from a store; the collections' public ``delete``
    leaves the emptied per-rollout level of their index (``_items``) behind.
    """
    collection._items.pop(rollout_id, None)


def forget_rollout_bookkeeping(store: InMemoryLightningStore, rollout_id: str) -> None:
    """Drop what ``InMemoryLightningStore`` keeps for a rollout beside its collections.

    Missing public API: deleting a rollout from a store; its completion event, start time,
    running flag, span-eviction flag and span byte count live in private attributes
    (``_completion_events``, ``_start_time_by_rollout``, ``_running_rollout_ids``,
    ``_evicted_rollout_span_sets``, ``_span_bytes_by_rollout``, ``_total_span_bytes``).
    """
    store._completion_events.pop(rollout_id, None)
    store._start_time_by_rollout.pop(rollout_id, None)
    store._running_rollout_ids.discard(rollout_id)
    store._evicted_rollout_span_sets.discard(rollout_id)
    removed = store._span_bytes_by_rollout.pop(rollout_id, 0)
    store._total_span_bytes = max(store._total_span_bytes - removed, 0)
