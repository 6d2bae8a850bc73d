"""Dispatch one batch of task groups through a LightningStore and collect processed results.

``dispatch_batch`` enqueues ``len(tasks) × group_size`` rollouts (``enqueue_many_rollouts``,
with the mode, resources id and ``RolloutConfig`` the caller chose), keeps at most
``max_in_flight`` of them unfinished in the store (refilling as others finish), learns of each
completion from a completion source (:mod:`agl_tinker.dispatch.completion`: store events, wait-for-any,
or long-poll; no fixed-interval polling), and hands each round of finished rollouts to the one
reader (:mod:`agl_tinker.dispatch.reader`: read the rollout and its latest attempt's spans, run
the ``process`` callable, the pure reconstruct -> align -> rewards pipeline, release the rollout
from the store). Results come back grouped by task, in slot order, with timing stats
(:mod:`agl_tinker.dispatch.types`; ``benchmarks/dispatch.py`` measures them).

``RolloutConfig`` timeouts and retries are applied by the store, not here: its watchdog
(``healthcheck_before``) runs at the start of store calls, debounced by the store's
``scan_debounce_seconds``, and marks attempts ``timeout``/``unresponsive``; a status listed in
``retry_condition`` requeues the rollout until ``max_attempts``, otherwise it fails. The
completion sources make sure such calls happen while rollouts are in flight.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from agentlightning.store.base import LightningStore
from agentlightning.types import EnqueueRolloutRequest, Rollout, Span

from agl_tinker.dispatch.completion import CompletionSource, open_completion_source
from agl_tinker.dispatch.reader import RolloutReader
from agl_tinker.dispatch.store_calls import StoreCaller, cancel_unfinished
from agl_tinker.dispatch.types import (
    BatchResult,
    DispatchConfig,
    DispatchError,
    DispatchProgress,
    DispatchStats,
    GroupResult,
    RolloutOutcome,
)

__all__ = ["dispatch_batch"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CANCEL_GRACE_S = 10.0  # after a batch timeout, how long the store may take to report cancellations


async def dispatch_batch(
    store: LightningStore,
    tasks: Sequence[Mapping[str, Any]],
    group_size: int,
    process: Callable[[Rollout, Sequence[Span]], T],
    *,
    config: DispatchConfig | None = None,
    on_progress: Callable[[DispatchProgress], None] | None = None,
) -> BatchResult[T]:
    """Run every task ``group_size`` times through ``store`` and process each finished rollout.

    ``process(rollout, spans)`` receives the finished rollout (an ``AttemptedRollout`` carrying
    the latest attempt, unless it never started) and the spans of its latest attempt, deduplicated
    by span id and ordered by sequence id. It is called for every terminal status, including
    failed, timed-out and cancelled rollouts, so exclusions are decided (and counted) there.

    Raises:
        ProcessError: ``process`` raised; unfinished rollouts are cancelled in the store first.
        StoreCallError: a store call kept failing after ``store_retries`` retries.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    run = _Dispatch(store, tasks, group_size, process, config or DispatchConfig(), on_progress)
    return await run.run()


class _Dispatch(Generic[T]):
    def __init__(
        self,
        store: LightningStore,
        tasks: Sequence[Mapping[str, Any]],
        group_size: int,
        process: Callable[[Rollout, Sequence[Span]], T],
        cfg: DispatchConfig,
        on_progress: Callable[[DispatchProgress], None] | None,
    ) -> None:
        self.store = store
        self.tasks = list(tasks)
        self.process = process
        self.cfg = cfg
        self.on_progress = on_progress
        self.call = StoreCaller(cfg.store_retries)
        self.reader = RolloutReader(
            store,
            process,
            self.call,
            before_read=cfg.before_read,
            release=cfg.release,
            call_counts=cfg.call_counts,
        )
        # Group-major order: with a cap on rollouts in flight, whole groups finish early.
        self.slots = [(g, k) for g in range(len(self.tasks)) for k in range(group_size)]
        self.cap = cfg.max_in_flight or max(1, len(self.slots))
        self.next_slot = 0
        self.in_flight: dict[str, tuple[int, int]] = {}
        self.processing = 0
        self.outcomes: dict[tuple[int, int], RolloutOutcome[T]] = {}
        self.deadline_hit = False
        self.cut: set[str] = set()  # rollouts ended by the stall deadline: they count as timeout
        self.enqueue_s = self.wait_s = self.process_s = 0.0
        self.max_in_flight_seen = 0
        self.watcher: CompletionSource | None = None

    async def run(self) -> BatchResult[T]:
        t0 = time.perf_counter()
        deadline = None if self.cfg.batch_timeout_s is None else t0 + self.cfg.batch_timeout_s
        last_progress = t0
        watcher = self.watcher = open_completion_source(self.store, self.cfg, self.call)
        try:
            async with asyncio.TaskGroup() as tg:
                await self._refill(watcher)
                while self.in_flight:
                    timeout = (
                        _CANCEL_GRACE_S if self.deadline_hit else self._time_left(deadline, last_progress)
                    )
                    t = time.perf_counter()
                    try:
                        finished = await asyncio.wait_for(watcher.next_finished(), timeout)
                    except TimeoutError:
                        if self.deadline_hit:
                            raise DispatchError(
                                f"{len(self.in_flight)} rollouts cancelled at the batch deadline were never "
                                f"reported finished by the store within {_CANCEL_GRACE_S}s"
                            ) from None
                        await self._hit_deadline(stalled=deadline is None or time.perf_counter() < deadline)
                        continue
                    finally:
                        self.wait_s += time.perf_counter() - t
                    round_ = [(rid, self.in_flight.pop(rid)) for rid in finished if rid in self.in_flight]
                    if round_:
                        last_progress = time.perf_counter()
                        self.processing += len(round_)
                        tg.create_task(self._finish_round(round_))
                    await self._refill(watcher)
                    self._report()
        except BaseExceptionGroup as group:
            await self._abandon()
            raise _first_error(group)  # noqa: B904 - the error keeps its own cause; the group adds nothing
        except BaseException:
            await self._abandon()
            raise
        finally:
            await watcher.aclose()
        return self._result(time.perf_counter() - t0)

    def _time_left(self, deadline: float | None, last_progress: float) -> float | None:
        """Seconds until the batch deadline or the stall deadline, whichever is first (None: never)."""
        now = time.perf_counter()
        limits = [] if deadline is None else [deadline - now]
        if self.cfg.stall_timeout_s is not None:
            limits.append(last_progress + self.cfg.stall_timeout_s - now)
        return min(limits) if limits else None

    async def _refill(self, watcher: CompletionSource) -> None:
        free = self.cap - len(self.in_flight)
        if self.deadline_hit or free <= 0 or self.next_slot >= len(self.slots):
            return
        slots = self.slots[self.next_slot : self.next_slot + free]
        requests = [
            EnqueueRolloutRequest(
                input=dict(self.tasks[g]),
                mode=self.cfg.mode,
                resources_id=self.cfg.resources_id,
                config=self.cfg.rollout_config,
                metadata={**(self.cfg.metadata or {}), "group_index": g, "group_slot": k},
            )
            for g, k in slots
        ]
        t = time.perf_counter()
        rollouts = await self.call(
            "enqueue_many_rollouts", lambda: self.store.enqueue_many_rollouts(requests)
        )
        self.enqueue_s += time.perf_counter() - t
        if len(rollouts) != len(requests):
            raise DispatchError(
                f"enqueue_many_rollouts returned {len(rollouts)} rollouts for {len(requests)}"
            )
        self.next_slot += len(slots)
        for rollout, slot in zip(rollouts, slots, strict=True):
            self.in_flight[rollout.rollout_id] = slot
        self.max_in_flight_seen = max(self.max_in_flight_seen, len(self.in_flight))
        watcher.watch([r.rollout_id for r in rollouts])
        self._report()

    async def _finish_round(self, items: list[tuple[str, tuple[int, int]]]) -> None:
        """Read and process the rollouts that finished together (:class:`RolloutReader`), then release them."""
        t = time.perf_counter()
        assert self.watcher is not None
        outcomes = await self.reader.read(dict(items), self.watcher, cut=self.cut)
        for rid, slot in items:
            self.outcomes[slot] = outcomes[rid]
        self.processing -= len(items)
        self.process_s += time.perf_counter() - t
        self._report()
        await self.reader.release(outcomes.values())  # the batch returns once its rounds are released

    async def _hit_deadline(self, *, stalled: bool) -> None:
        """Cancel what is still running so the store finishes it and the waiters wake up.

        ``stalled``: the stall deadline fired (not ``batch_timeout_s``): the cancelled rollouts
        count as timed out.
        """
        self.deadline_hit = True
        ids = list(self.in_flight)
        if stalled:
            self.cut.update(ids)
            logger.error(
                "no rollout finished for %.1fs (stall deadline): %d unfinished rollouts count as "
                "timeout, %d not started are skipped; are the runners alive, or stuck inside agents?",
                self.cfg.stall_timeout_s,
                len(ids),
                len(self.slots) - self.next_slot,
            )
        else:
            logger.warning(
                "batch timeout (%.1fs): cancelling %d unfinished rollouts, skipping %d not started",
                self.cfg.batch_timeout_s,
                len(ids),
                len(self.slots) - self.next_slot,
            )
        for rid in ids:
            await self.call(
                "update_rollout",
                functools.partial(self.store.update_rollout, rollout_id=rid, status="cancelled"),
            )

    async def _abandon(self) -> None:
        """On failure, cancel unfinished rollouts so runners do not pick up orphaned work."""
        await cancel_unfinished(self.store, list(self.in_flight), context=" after a failure")

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(
                DispatchProgress(
                    total=len(self.slots),
                    done=len(self.outcomes),
                    in_flight=len(self.in_flight) + self.processing,
                    not_started=len(self.slots) - self.next_slot,
                )
            )

    def _result(self, wall_s: float) -> BatchResult[T]:
        groups = tuple(
            GroupResult(
                group_index=g,
                task=self.tasks[g],
                outcomes=tuple(o for (gi, _), o in sorted(self.outcomes.items()) if gi == g),
            )
            for g in range(len(self.tasks))
        )
        counts: dict[str, int] = {}
        for o in self.outcomes.values():
            counts[o.final_status] = counts.get(o.final_status, 0) + 1
        overheads = tuple(o.overhead_s for o in self.outcomes.values() if o.overhead_s is not None)
        detects = tuple(o.detect_s for o in self.outcomes.values() if o.detect_s is not None)
        reads = tuple(o.read_s for o in self.outcomes.values() if o.read_s is not None)
        stats = DispatchStats(
            n_rollouts=self.next_slot,
            n_skipped=len(self.slots) - self.next_slot,
            status_counts=counts,
            wall_s=wall_s,
            enqueue_s=self.enqueue_s,
            wait_s=self.wait_s,
            process_s=self.process_s,
            max_in_flight=self.max_in_flight_seen,
            overheads_s=overheads,
            detects_s=detects,
            reads_s=reads,
            wait=self.watcher.strategy if self.watcher is not None else "",
            released=self.reader.released,
        )
        return BatchResult(groups=groups, stats=stats)


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The most informative exception of a TaskGroup failure, unwrapped for the caller."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    for e in leaves:
        if not isinstance(e, asyncio.CancelledError):
            return e
    return leaves[0] if leaves else group
