"""The completion source of an in-process in-memory store: its own per-rollout events (``events``)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from agentlightning.store.base import LightningStore

from agl_tinker.dispatch.source_base import SourceBase
from agl_tinker.dispatch.store_calls import StoreCaller
from agl_tinker.dispatch.types import DispatchConfig

__all__ = ["StoreEventsSource"]


class StoreEventsSource(SourceBase):
    """Awaits the in-process in-memory store's own per-rollout completion events (no thread).

    A rollout without an event (the store did not make one) is found by the watchdog tick, which
    also runs when ``rollout_config`` sets a timeout, so the store's watchdog runs with silent
    runners.
    """

    def __init__(
        self, store: LightningStore, config: DispatchConfig, call: StoreCaller, *, events: Mapping[str, Any]
    ) -> None:
        super().__init__(store, call)
        self._events = events
        rc = config.rollout_config
        self._needs_watchdog = rc is not None and (
            rc.timeout_seconds is not None or rc.unresponsive_seconds is not None
        )
        self._watchdog_s = config.watchdog_s
        self._missing_events = False

    @property
    def strategy(self) -> str:
        return "events"

    def watch(self, rollout_ids: Sequence[str]) -> None:
        for rid in rollout_ids:
            self._watching.add(rid)
            event = self._events.get(rid)
            if event is not None:
                self._spawn(self._await_event(rid, event))
            else:
                self._missing_events = True
        if self._background is None and (self._needs_watchdog or self._missing_events):
            self._background = self._spawn(self._watchdog_loop())

    async def _await_event(self, rid: str, event: Any) -> None:
        await event  # aiologic.Event is awaitable across threads and event loops, no executor thread
        self._mark(rid)

    async def _watchdog_loop(self) -> None:
        # The store applies RolloutConfig timeouts only when one of its methods is called. With
        # event waits and silent runners nothing calls it, so a hung rollout would never time out;
        # this tick is such a call. wait_for_rollouts(timeout=0) is cheap and also returns any
        # rollout whose completion event is missing (those are only found here).
        while True:
            await asyncio.sleep(self._watchdog_s)  # ok: drives the store's timeout watchdog, not completion
            ids = list(self._watching)
            if not ids:
                continue
            done = await self._call(
                "wait_for_rollouts",
                functools.partial(self._store.wait_for_rollouts, rollout_ids=ids, timeout=0),
            )
            for rollout in done:
                self._mark(rollout.rollout_id)
