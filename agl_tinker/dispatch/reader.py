"""The one rollout reader: finished rollouts in, processed outcomes out, the store let go of them.

Both dispatchers (:mod:`agl_tinker.dispatch.batch`, :mod:`agl_tinker.dispatch.continuous`) hand
each round of rollouts that finished together to :meth:`RolloutReader.read`, which

1. awaits ``before_read`` (the endpoint's span flush: a call's span is stored off the request path);
2. takes each rollout from the completion source when it came with its completion (wait-for-any),
   or reads the rest with one ``query_rollouts`` for the round, alongside one ``query_spans``
   (latest attempt) per rollout;
3. dedupes the spans (by span id, ordered by sequence id) and hands rollout and spans to
   ``process`` (the pure reconstruct -> align -> rewards pipeline); with ``call_counts`` (an
   endpoint in this process) the rollout copy carries the calls served its attempt
   (:data:`SERVED_CALLS_METADATA_KEY`), and the round's counts are released once read;
4. on :meth:`RolloutReader.release`, which the dispatcher awaits once it has handed the outcomes on
   (off the path from a finished rollout to its group's training), releases the round's finished
   rollouts from the store (:func:`agl_tinker.store_release.release_rollouts`): their results are
   taken, and a store that kept them would grow by a batch every step.

Rollouts ``cancelled`` in the store stay (a runner may still write to them); a store that cannot
release keeps growing and the run goes on (logged once per reader).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Generic, TypeVar

from agentlightning.store.base import LightningStore
from agentlightning.types import AttemptedRollout, Rollout, Span

from agl_tinker.core.reconstruct import dedupe_spans
from agl_tinker.dispatch.completion import CompletionSource
from agl_tinker.dispatch.store_calls import StoreCaller
from agl_tinker.dispatch.types import (
    DEADLINE_METADATA_KEY,
    SERVED_CALLS_METADATA_KEY,
    CallCounts,
    ProcessError,
    RolloutOutcome,
    StoreCallError,
    outcome_of,
)
from agl_tinker.store_release import release_rollouts

__all__ = ["RELEASED_STATUSES", "RolloutReader"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

RELEASED_STATUSES = frozenset({"succeeded", "failed"})
"""Store statuses of the rollouts the reader releases once read (not ``cancelled``: see the module)."""


class RolloutReader(Generic[T]):
    """Reads, processes and releases finished rollouts for one dispatcher.

    Args:
        store: the store the rollouts were enqueued in.
        process: ``process(rollout, spans)`` -> the rollout's result; called for every terminal
            status, so exclusions are decided (and counted) there.
        call: the dispatcher's store caller (bounded retries on network errors).
        before_read: awaited once per round before any span is read (``DispatchConfig.before_read``).
        release: release finished rollouts from the store after reading them.
        call_counts: the endpoint's calls served per attempt (``DispatchConfig.call_counts``).
    """

    def __init__(
        self,
        store: LightningStore,
        process: Callable[[Rollout, Sequence[Span]], T],
        call: StoreCaller,
        *,
        before_read: Callable[[], Awaitable[None]] | None = None,
        release: bool = True,
        call_counts: CallCounts | None = None,
    ) -> None:
        self._store = store
        self._call_counts = call_counts
        self._process = process
        self._call = call
        self._before_read = before_read
        self._release = release
        self._release_failed = False
        self.released = 0
        """Rollouts this reader released from the store so far."""

    async def read(
        self,
        slots: Mapping[str, tuple[int, int]],
        source: CompletionSource,
        *,
        cut: Collection[str] = (),
    ) -> dict[str, RolloutOutcome[T]]:
        """Read and process the rollouts of one round; their outcomes by rollout id.

        The caller hands the outcomes on, then awaits :meth:`release` with them: the store keeps
        the rollouts until then.

        Args:
            slots: rollout id -> (group index or key, slot in the group) of each finished rollout.
            source: the completion source that reported them (it may hold the rollouts themselves,
                and the time it noticed each; both are taken out of it here).
            cut: rollouts ended by the dispatcher's stall deadline: one still unfinished by its
                runner is judged failed, its attempt timed out (:data:`DEADLINE_METADATA_KEY`).

        A round cancelled midway releases the rollouts it had read (their outcomes are lost with
        the round); the ones not read yet stay in the store as they finished.

        Raises:
            ProcessError: ``process`` raised on a rollout (the cause is chained).
            StoreCallError: a store call kept failing, or ``query_rollouts`` lost a rollout.
        """
        if self._before_read is not None:
            await self._before_read()
        given = {rid: r for rid in slots if (r := source.finished_rollouts.pop(rid, None)) is not None}
        missing = [rid for rid in slots if rid not in given]
        queried: asyncio.Future[Sequence[Rollout]] | None = None
        if missing:
            query = functools.partial(self._store.query_rollouts, rollout_id_in=missing)
            queried = asyncio.ensure_future(self._call("query_rollouts", query))
        reads = [
            asyncio.ensure_future(self._read_one(rid, slot, given.get(rid), queried, source, rid in cut))
            for rid, slot in slots.items()
        ]
        try:
            results = await asyncio.gather(*reads)
        except asyncio.CancelledError:
            # Cancelled (the run is shutting down): the outcomes read are dropped, so the store
            # forgets their rollouts as it would after the round (they would stay for good).
            await self.release(
                [r.result() for r in reads if r.done() and not r.cancelled() and not r.exception()]
            )
            raise
        finally:
            if queried is not None:
                queried.cancel()
            if self._call_counts is not None:
                self._call_counts.forget_calls(slots)
        return dict(zip(slots, results, strict=True))

    async def _read_one(
        self,
        rid: str,
        slot: tuple[int, int],
        rollout: Rollout | None,
        queried: asyncio.Future[Sequence[Rollout]] | None,
        source: CompletionSource,
        cut_candidate: bool,
    ) -> RolloutOutcome[T]:
        spans = await self._call("query_spans", functools.partial(self._store.query_spans, rid, "latest"))
        if rollout is None and queried is not None:
            rollout = next((r for r in await queried if r.rollout_id == rid), None)
        if rollout is None:
            raise StoreCallError(f"query_rollouts did not return finished rollout {rid}")
        unique, n_dup = dedupe_spans(spans)
        cut = cut_candidate and rollout.status not in RELEASED_STATUSES
        if cut:
            rollout = _as_cut_by_deadline(rollout)
        served = self._served_calls(rollout, unique)
        if served is not None:
            rollout = rollout.model_copy(
                update={"metadata": {**(rollout.metadata or {}), SERVED_CALLS_METADATA_KEY: served}}
            )
        try:
            result = self._process(rollout, unique)
        except Exception as e:
            raise ProcessError(
                rid, f"process() failed on rollout {rid} (group {slot[0]}, slot {slot[1]}): {e!r}"
            ) from e
        return outcome_of(
            rollout,
            result,
            group_index=slot[0],
            slot=slot[1],
            n_spans=len(unique),
            n_duplicate_spans=n_dup,
            noticed_time=source.noticed.pop(rid, None),
            cut_by_deadline=cut,
        )

    def _served_calls(self, rollout: Rollout, spans: Sequence[Span]) -> int | None:
        """Calls the endpoint served the attempt whose spans were read, or ``None`` (unknown)."""
        if self._call_counts is None:
            return None
        if isinstance(rollout, AttemptedRollout):
            attempt_id = rollout.attempt.attempt_id
        else:
            attempts = {span.attempt_id for span in spans}
            if len(attempts) != 1:
                return None  # no spans, and no attempt named: nothing to compare
            (attempt_id,) = attempts
        return self._call_counts.served_calls(rollout.rollout_id, attempt_id)

    async def release(self, outcomes: Collection[RolloutOutcome[Any]]) -> None:
        """Let the store forget the finished rollouts of ``outcomes`` (from :meth:`read`).

        Best effort, never raises: the results are taken; a store that cannot release is logged
        once and left to grow. ``cancelled`` rollouts are kept (see the module).
        """
        if not self._release or self._release_failed:
            return
        finished = [o.rollout_id for o in outcomes if o.status in RELEASED_STATUSES]
        if not finished:
            return
        try:
            released = await release_rollouts(self._store, finished)
        except Exception as e:  # only the store's memory is at stake
            logger.warning("could not release %d finished rollouts from the store: %r", len(finished), e)
            return
        if released is None:
            self._release_failed = True
            logger.info("this store cannot release finished rollouts: it keeps every rollout of the run")
            return
        self.released += len(released)


def _as_cut_by_deadline(rollout: Rollout) -> Rollout:
    """A copy of ``rollout`` as ``process`` should judge it: failed, its attempt timed out."""
    update: dict[str, Any] = {
        "status": "failed",
        "metadata": {**(rollout.metadata or {}), DEADLINE_METADATA_KEY: True},
    }
    if isinstance(rollout, AttemptedRollout):
        update["attempt"] = rollout.attempt.model_copy(update={"status": "timeout"})
    return rollout.model_copy(update=update)
