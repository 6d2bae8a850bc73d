"""Forgetting finished rollouts, and the in-memory store behind a store object when it lives here.

A store otherwise keeps every rollout and span for its whole life; :func:`release_rollouts` is
called once a rollout's result is taken. :func:`completion_events` gives the in-memory store's own
per-rollout completion events to the completion sources and the store server's wait-for-any route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from agentlightning.store.base import LightningStore, is_finished
from agentlightning.store.client_server import LightningStoreClient, LightningStoreServer
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded

from agl_tinker.agl_internals import (
    client_request_json,
    drop_emptied_index_level,
    forget_rollout_bookkeeping,
    memory_store_completion_events,
    server_store_is_here,
)
from agl_tinker.store_routes import RELEASE_PATH, ReleaseResponse

__all__ = ["completion_events", "in_process_memory_store", "release_from_memory_store", "release_rollouts"]


def in_process_memory_store(store: LightningStore) -> InMemoryLightningStore | None:
    """The ``InMemoryLightningStore`` behind ``store`` when it lives in this process, else ``None``.

    ``None`` for any other store, and for a server whose store lives in another process.
    """
    inner: Any = store
    if isinstance(inner, LightningStoreServer):
        # A server owned by another process (or unpickled) holds no store: it forwards over HTTP.
        if not server_store_is_here(inner):
            return None
        inner = inner.store
    if isinstance(inner, LightningStoreThreaded):
        inner = inner.store
    return inner if isinstance(inner, InMemoryLightningStore) else None


def completion_events(store: LightningStore) -> Mapping[str, Any] | None:
    """The in-memory store's per-rollout completion events (``aiologic.Event``), when it lives here.

    ``None`` for any other store, and for a server whose store lives in another process.
    """
    inner = in_process_memory_store(store)
    return memory_store_completion_events(inner) if inner is not None else None


async def release_rollouts(store: LightningStore, rollout_ids: Sequence[str]) -> list[str] | None:
    """Forget finished rollouts: the rollout, its attempts, spans and bookkeeping; the ids released.

    A store otherwise keeps every rollout and span for its whole life, so a long run grows by a
    batch of them each step. Call this once a rollout's result is taken (trained on or excluded).
    Unfinished and unknown ids are left alone. Works on an in-memory store in this process (the
    one-click layout) and, over ``LightningStoreClient``, on a :class:`~agl_tinker.store_server.LeanStoreServer` in another
    (split mode: its :data:`RELEASE_PATH`). ``None`` when ``store`` cannot release (another kind
    of store, or a stock ``agl store`` server): the caller keeps going, the store keeps growing.
    """
    ids = list(dict.fromkeys(rollout_ids))
    if not ids:
        return []
    inner = in_process_memory_store(store)
    if inner is not None:
        return await release_from_memory_store(inner, ids)
    if isinstance(store, LightningStoreClient):
        try:
            answer = await client_request_json(store, "post", RELEASE_PATH, body={"rollout_ids": ids})
        except aiohttp.ClientResponseError as e:
            if e.status in (404, 405):  # not an agl-tinker store server
                return None
            raise
        return ReleaseResponse.model_validate(answer).released
    return None


async def release_from_memory_store(store: InMemoryLightningStore, rollout_ids: Sequence[str]) -> list[str]:
    """Delete finished rollouts and everything the in-memory store keeps for them.

    Agent-lightning 0.3.0's stores have no public delete. This uses the store's collections' own
    ``query`` / ``delete`` / ``pop`` under the store's locks, and, through
    :mod:`agl_tinker.agl_internals`, private attributes for the rest: the emptied per-rollout level
    of the collections' indexes, and the per-rollout bookkeeping ``InMemoryLightningStore`` keeps
    beside its collections (completion events, start times, span byte counts, running ids).
    """
    released: list[str] = []
    labels: Any = ["rollouts", "attempts", "spans", "span_sequence_ids"]
    async with store.collections.atomic(mode="rw", labels=labels) as collections:
        for rid in rollout_ids:
            rollout = await collections.rollouts.get({"rollout_id": {"exact": rid}})
            if rollout is None or not is_finished(rollout):
                continue
            for collection in (collections.spans, collections.attempts):
                items = await collection.query(filter={"rollout_id": {"exact": rid}})
                await collection.delete(list(items.items))
                drop_emptied_index_level(collection, rid)
            await collections.span_sequence_ids.pop(rid)
            await collections.rollouts.delete([rollout])
            forget_rollout_bookkeeping(store, rid)
            released.append(rid)
    return released
