"""Continuous dispatch: task groups stay in flight across training steps; no barrier at a step's end.

:func:`agl_tinker.dispatch.batch.dispatch_batch` runs one batch and returns when its slowest rollout is
done. A :class:`ContinuousDispatcher` instead takes groups at any time (:meth:`submit`), keeps
whole groups enqueued in the store up to its caps, refills as groups finish, and hands each
finished group out on its own (:meth:`next_group`, completion order). The training loop takes
groups as they come and trains while the next ones run.

Completions are learned, and finished rollouts read and released, as ``dispatch_batch`` does:
the same completion sources (:mod:`agl_tinker.dispatch.completion`: store events, wait-for-any or
long-poll) and the same reader (:mod:`agl_tinker.dispatch.reader`). Rollout
timeouts and retries are the store's, through ``DispatchConfig.rollout_config``;
``DispatchConfig.batch_timeout_s`` and ``max_in_flight`` do not apply (the caps are arguments).

Two caps bound the work ahead of the trainer:

* ``max_groups``: groups dispatched and not yet handed out by :meth:`next_group` (in flight in the
  store, or finished and waiting). The async loop sets it so that a group is normally trained
  within its staleness bound, instead of being sampled only to be requeued as stale.
* ``max_rollouts``: rollouts enqueued and unfinished in the store (``None``: no cap). A group is
  enqueued whole, so one group may exceed it when nothing else is in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from agentlightning.store.base import LightningStore
from agentlightning.types import EnqueueRolloutRequest, Rollout, Span

from agl_tinker.dispatch.completion import CompletionSource, open_completion_source
from agl_tinker.dispatch.reader import RolloutReader
from agl_tinker.dispatch.store_calls import StoreCaller, cancel_unfinished
from agl_tinker.dispatch.types import DispatchConfig, DispatchError, RolloutOutcome

__all__ = ["ContinuousDispatcher", "FinishedGroup", "GroupRequest"]

T = TypeVar("T")


@dataclass(frozen=True)
class GroupRequest:
    """One task to roll out ``group_size`` times.

    ``key`` names the group in the run's stream of groups (unique per dataset position); a group
    requeued as stale is submitted again with the same key and ``attempt + 1``.
    """

    key: int
    task: Mapping[str, Any]
    attempt: int = 0


@dataclass(frozen=True)
class FinishedGroup(Generic[T]):
    """A group whose rollouts all reached a terminal status, with what ``process`` made of each."""

    request: GroupRequest
    outcomes: tuple[RolloutOutcome[T], ...]
    dispatched_at: float
    """``time.perf_counter()`` when the group was enqueued in the store."""
    finished_at: float
    """``time.perf_counter()`` when its last rollout was processed."""


@dataclass
class _Running:
    request: GroupRequest
    rollout_ids: tuple[str, ...]
    dispatched_at: float
    outcomes: dict[int, RolloutOutcome[Any]]


class ContinuousDispatcher(Generic[T]):
    """Dispatches submitted groups continuously through ``store``; use as ``async with``.

    ``process(rollout, spans)`` is called once per finished rollout, as in ``dispatch_batch``.
    Leaving the ``async with`` block cancels, in the store, every rollout still unfinished, so
    runners do not keep working for a run that has ended; submitted groups not yet dispatched
    are forgotten.
    """

    def __init__(
        self,
        store: LightningStore,
        group_size: int,
        process: Callable[[Rollout, Sequence[Span]], T],
        *,
        config: DispatchConfig | None = None,
        max_groups: int | None = None,
        max_rollouts: int | None = None,
    ) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if max_groups is not None and max_groups < 1:
            raise ValueError(f"max_groups must be >= 1 or None, got {max_groups}")
        if max_rollouts is not None and max_rollouts < 1:
            raise ValueError(f"max_rollouts must be >= 1 or None, got {max_rollouts}")
        self._store = store
        self._group_size = group_size
        self._process = process
        self._cfg = config or DispatchConfig()
        self._max_groups = max_groups
        self._max_rollouts = max_rollouts
        self._call = StoreCaller(self._cfg.store_retries)
        self._reader: RolloutReader[T] = RolloutReader(
            store,
            process,
            self._call,
            before_read=self._cfg.before_read,
            release=self._cfg.release,
            call_counts=self._cfg.call_counts,
        )
        self._watcher: CompletionSource | None = None
        self._pending: deque[GroupRequest] = deque()
        self._running: dict[int, _Running] = {}  # by group key
        self._by_rollout: dict[str, tuple[int, int]] = {}  # unfinished rollout id -> (key, slot)
        self._finished: asyncio.Queue[FinishedGroup[T] | BaseException] = asyncio.Queue()
        self._refill_lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._releases: set[asyncio.Task[None]] = set()
        self._idle_since: float | None = None
        self._idle_s = 0.0
        self.max_rollouts_seen = 0
        self.read_s = 0.0
        """Total time spent reading and processing finished rollouts (rounds may overlap)."""

    # -- public --------------------------------------------------------------------------------

    async def __aenter__(self) -> ContinuousDispatcher[T]:
        self._watcher = open_completion_source(self._store, self._cfg, self._call)
        self._idle_since = time.perf_counter()
        self._loop_task = asyncio.create_task(self._collect_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def submit(self, requests: Sequence[GroupRequest], *, front: bool = False) -> None:
        """Queue groups for dispatch (at the front: before groups already waiting) and dispatch
        as many as the caps allow now."""
        if front:
            self._pending.extendleft(reversed(list(requests)))
        else:
            self._pending.extend(requests)
        await self._refill()

    async def next_group(self) -> FinishedGroup[T]:
        """The next group to finish (completion order); raises what the background work raised.

        Handing a group out frees its place under ``max_groups``: more groups are dispatched.
        """
        item = await self._finished.get()
        if isinstance(item, BaseException):
            raise item
        await self._refill()
        return item

    def take_finished(self) -> list[FinishedGroup[T]]:
        """Every group finished so far and not yet handed out, without waiting (no refill)."""
        items: list[FinishedGroup[T]] = []
        while not self._finished.empty():
            item = self._finished.get_nowait()
            if isinstance(item, BaseException):
                raise item
            items.append(item)
        return items

    @property
    def pending_groups(self) -> int:
        """Submitted groups not dispatched yet."""
        return len(self._pending)

    @property
    def running_groups(self) -> int:
        """Groups dispatched with at least one rollout not finished and processed."""
        return len(self._running)

    @property
    def waiting_groups(self) -> int:
        """Groups finished and not yet handed out by :meth:`next_group`."""
        return self._finished.qsize()

    @property
    def rollouts_in_flight(self) -> int:
        return len(self._by_rollout)

    @property
    def released(self) -> int:
        """Finished rollouts released from the store once read, so far."""
        return self._reader.released

    def sampler_idle_s(self) -> float:
        """Total time so far during which no rollout of this dispatcher was unfinished in the store."""
        idle = self._idle_s
        if self._idle_since is not None:
            idle += time.perf_counter() - self._idle_since
        return idle

    async def aclose(self) -> None:
        """Stop collecting, cancel unfinished rollouts in the store, forget pending groups; the
        finished rollouts already read are released first."""
        self._pending.clear()
        tasks = [t for t in (self._loop_task, *self._readers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._releases)  # read rounds' releases finish (they never raise)
        self._loop_task = None
        if self._watcher is not None:
            await self._watcher.aclose()
        await self._cancel_unfinished()

    # -- dispatch ------------------------------------------------------------------------------

    def _outstanding_groups(self) -> int:
        return len(self._running) + self._finished.qsize()

    async def _refill(self) -> None:
        async with self._refill_lock:
            batch: list[GroupRequest] = []
            while self._pending and self._room_for(batch):
                batch.append(self._pending.popleft())
            if batch:
                await self._enqueue(batch)

    def _room_for(self, batch: list[GroupRequest]) -> bool:
        """Whether one more group fits, counting the groups already picked for this enqueue."""
        groups = self._outstanding_groups() + len(batch)
        if self._max_groups is not None and groups >= self._max_groups:
            return False
        rollouts = len(self._by_rollout) + len(batch) * self._group_size
        if self._max_rollouts is None or rollouts == 0:
            return True
        return rollouts + self._group_size <= self._max_rollouts

    async def _enqueue(self, groups: list[GroupRequest]) -> None:
        assert self._watcher is not None, "use ContinuousDispatcher as `async with`"
        requests = [
            EnqueueRolloutRequest(
                input=dict(g.task),
                mode=self._cfg.mode,
                resources_id=self._cfg.resources_id,
                config=self._cfg.rollout_config,
                metadata={
                    **(self._cfg.metadata or {}),
                    "group_index": g.key,
                    "group_slot": k,
                    "group_attempt": g.attempt,
                },
            )
            for g in groups
            for k in range(self._group_size)
        ]
        rollouts = await self._call(
            "enqueue_many_rollouts", lambda: self._store.enqueue_many_rollouts(requests)
        )
        if len(rollouts) != len(requests):
            raise DispatchError(
                f"enqueue_many_rollouts returned {len(rollouts)} rollouts for {len(requests)}"
            )
        now = time.perf_counter()
        if self._idle_since is not None:
            self._idle_s += now - self._idle_since
            self._idle_since = None
        for i, group in enumerate(groups):
            ids = tuple(r.rollout_id for r in rollouts[i * self._group_size : (i + 1) * self._group_size])
            if group.key in self._running:
                raise DispatchError(f"group {group.key} submitted while it is still running")
            self._running[group.key] = _Running(group, ids, now, {})
            for slot, rid in enumerate(ids):
                self._by_rollout[rid] = (group.key, slot)
        self.max_rollouts_seen = max(self.max_rollouts_seen, len(self._by_rollout))
        self._watcher.watch([r.rollout_id for r in rollouts])

    # -- collection ----------------------------------------------------------------------------

    async def _collect_loop(self) -> None:
        assert self._watcher is not None
        try:
            while True:
                finished = await self._watcher.next_finished()
                known = [rid for rid in finished if rid in self._by_rollout]
                if known:
                    task = asyncio.create_task(self._read_round(known))
                    self._readers.add(task)
                    task.add_done_callback(self._readers.discard)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._finished.put_nowait(e)

    async def _read_round(self, rollout_ids: list[str]) -> None:
        """Read and process rollouts that finished together; complete the groups they close.

        Their release from the store runs as a task of its own, after the groups are handed on and
        off the refill's path; :meth:`aclose` waits for it.
        """
        try:
            assert self._watcher is not None
            slots = {rid: self._by_rollout[rid] for rid in rollout_ids}
            t = time.perf_counter()
            outcomes = await self._reader.read(slots, self._watcher)
            self.read_s += time.perf_counter() - t
            for rid in rollout_ids:
                self._record(rid, outcomes[rid])
            release = asyncio.create_task(self._reader.release(outcomes.values()))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
            await self._refill()  # finished rollouts free room under max_rollouts
        except asyncio.CancelledError:
            for rid in rollout_ids:  # finished (some released by the reader): nothing to cancel at close
                self._by_rollout.pop(rid, None)
            raise
        except BaseException as e:
            self._finished.put_nowait(e)

    def _record(self, rid: str, outcome: RolloutOutcome[T]) -> None:
        key, slot = self._by_rollout.pop(rid)
        running = self._running[key]
        running.outcomes[slot] = outcome
        if not self._by_rollout and self._idle_since is None:
            self._idle_since = time.perf_counter()
        if len(running.outcomes) == self._group_size:
            del self._running[key]
            ordered = tuple(running.outcomes[k] for k in range(self._group_size))
            self._finished.put_nowait(
                FinishedGroup(running.request, ordered, running.dispatched_at, time.perf_counter())
            )

    async def _cancel_unfinished(self) -> None:
        ids = list(self._by_rollout)
        self._by_rollout.clear()
        self._running.clear()
        await cancel_unfinished(self._store, ids)
