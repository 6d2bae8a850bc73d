"""A runner's store view that fetches each resources snapshot once, not once per rollout.

Agent-lightning 0.3.0's ``LitAgentRunner`` asks the store for the rollout's resources
(``get_resources_by_id``) before every rollout: one of the five store round trips a one-call
rollout costs (dequeue, resources, reward sequence id, reward span, finish; ``docs/scaling.md``).
:class:`TinkerAlgorithm <agl_tinker.algorithm.TinkerAlgorithm>` adds two snapshots per run (train
and validation sampling settings) and never changes one in place (``add_resources``, never
``update_resources``), so a runner may keep what it fetched: :class:`ResourcesCache` holds the
last :data:`MAX_SNAPSHOTS` snapshots by id, and :class:`CachingResourcesStore` answers
``get_resources_by_id`` from it. An algorithm that *updates* a snapshot under the same id (a
documented use of ``update_resources``) needs runners without the cache
(``fast_runner(cache_resources=False)``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from agentlightning.store.base import LightningStore
from agentlightning.types import ResourcesUpdate

__all__ = ["MAX_SNAPSHOTS", "CachingResourcesStore", "ResourcesCache"]

MAX_SNAPSHOTS = 16
"""Snapshots one runner keeps (least recently used go first): a run adds two."""


class ResourcesCache:
    """The last :data:`MAX_SNAPSHOTS` resources snapshots a runner fetched, by ``resources_id``."""

    def __init__(self, max_snapshots: int = MAX_SNAPSHOTS) -> None:
        if max_snapshots < 1:
            raise ValueError(f"max_snapshots must be >= 1, got {max_snapshots}")
        self.max_snapshots = max_snapshots
        self._by_id: OrderedDict[str, ResourcesUpdate] = OrderedDict()
        self.fetches = 0
        """Store round trips made (cache misses)."""

    def __len__(self) -> int:
        return len(self._by_id)

    async def get(self, store: LightningStore, resources_id: str) -> ResourcesUpdate | None:
        """The snapshot ``resources_id``: kept, or fetched from ``store`` (kept unless missing)."""
        kept = self._by_id.get(resources_id)
        if kept is not None:
            self._by_id.move_to_end(resources_id)
            return kept
        self.fetches += 1
        fetched = await store.get_resources_by_id(resources_id)
        if fetched is not None:
            self._by_id[resources_id] = fetched
            while len(self._by_id) > self.max_snapshots:
                self._by_id.popitem(last=False)
        return fetched


class CachingResourcesStore:
    """``store``, except that ``get_resources_by_id`` goes through ``cache``.

    Every other attribute is the wrapped store's own (a structural stand-in, as the runner only
    calls store methods).
    """

    def __init__(self, store: LightningStore, cache: ResourcesCache) -> None:
        self._store = store
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        return await self._cache.get(self._store, resources_id)
