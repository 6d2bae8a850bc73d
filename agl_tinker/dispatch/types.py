"""What a dispatch takes and gives back: its configuration, per-rollout outcomes, stats, errors.

Shared by :func:`agl_tinker.dispatch.batch.dispatch_batch` (one batch, then return) and
:class:`agl_tinker.dispatch.continuous.ContinuousDispatcher` (groups in flight across steps).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from agentlightning.types import (
    AttemptedRollout,
    AttemptStatus,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
)

from agl_tinker.core.rewards import FinalStatus, final_status

__all__ = [
    "DEADLINE_METADATA_KEY",
    "SERVED_CALLS_METADATA_KEY",
    "BatchResult",
    "CallCounts",
    "DispatchConfig",
    "DispatchError",
    "DispatchProgress",
    "DispatchStats",
    "FinalStatus",
    "GroupResult",
    "ProcessError",
    "RolloutOutcome",
    "RolloutsLost",
    "StoreCallError",
    "WaitStrategy",
    "outcome_of",
]

T = TypeVar("T")

WaitStrategy = Literal["auto", "events", "wait_any", "long_poll"]

DEADLINE_METADATA_KEY = "agl_tinker_cut_by_deadline"
"""Set (``True``) in the metadata of the rollout copy ``process`` gets for a rollout ended by
``stall_timeout_s``; the store's record is not changed beyond its cancellation."""


SERVED_CALLS_METADATA_KEY = "agl_tinker_served_calls"
"""Set (an ``int``) in the metadata of the rollout copy ``process`` gets when
``DispatchConfig.call_counts`` knows how many calls the endpoint served the attempt read: spans
holding fewer calls lost the rest (``served_calls`` of :func:`agl_tinker.core.trajectory.rollout_trajectory`)."""


class CallCounts(Protocol):
    """The endpoint's count of calls served per rollout attempt (:class:`agl_tinker.endpoint.start.Endpoint`)."""

    def served_calls(self, rollout_id: str, attempt_id: str) -> int | None:
        """Calls served on the attempt's path; ``None`` when unknown."""
        ...

    def forget_calls(self, rollout_ids: Iterable[str]) -> None:
        """Release the counts of rollouts read for good."""
        ...


class DispatchError(RuntimeError):
    """The batch could not be dispatched or collected."""


class StoreCallError(DispatchError):
    """A store call kept failing with transient errors after all retries."""


class RolloutsLost(DispatchError):
    """The store no longer knows rollouts this batch enqueued (it was restarted, or replaced)."""


class ProcessError(DispatchError):
    """The ``process`` callable raised on a rollout (the cause is chained)."""

    def __init__(self, rollout_id: str, message: str) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


@dataclass(frozen=True)
class DispatchConfig:
    """How one batch is run. Timeouts and retries per rollout live in ``rollout_config``.

    Attributes:
        mode: rollout mode recorded in the store (``"train"`` or ``"val"``).
        resources_id: resources snapshot to run against; ``None`` lets the store pick the latest.
        rollout_config: per-rollout ``timeout_seconds``/``unresponsive_seconds``/``max_attempts``/
            ``retry_condition``, applied by the store's watchdog.
        max_in_flight: most rollouts enqueued and unfinished at once; ``None`` enqueues all.
        batch_timeout_s: after this, unfinished rollouts are cancelled in the store and
            not-yet-enqueued ones are skipped, so a batch with no live runner still ends.
        stall_timeout_s: when no rollout has finished for this long, the batch ends the same way,
            but its unfinished rollouts count as ``timeout`` (``RolloutOutcome.cut_by_deadline``;
            ``process`` sees them failed, with :data:`DEADLINE_METADATA_KEY` set in their
            metadata). Set it above the longest a healthy rollout can take to finish (its
            timeout times its attempts): past that, nothing is making progress (runners hung,
            dead or gone), and without it such a batch would wait forever.
        wait: ``"auto"`` picks ``events`` for an in-process in-memory store, ``wait_any`` for a
            ``LightningStoreClient`` (falling back to ``long_poll`` when its server lacks the
            route, as a stock ``agl store`` does), else ``long_poll``.
        long_poll_s: server-side block per long-poll request (clamped to 0.1 s for the client).
        long_poll_slots: long-poll requests open at once; each holds one server executor thread.
        watchdog_s: how often the store gets a call that runs its timeout watchdog: the tick of
            ``events`` mode, and the server-side block of each ``wait_any`` request.
        store_retries: retries of a store call that failed with a transient (network) error.
        metadata: extra rollout metadata (``group_index`` and ``group_slot`` are always added).
        before_read: awaited before the spans of finished rollouts are read. Pass the endpoint's
            ``flush``: it records a call's span off the request path, so a rollout can finish
            before the span of its last call reaches the store; every call of a finished rollout
            was answered (hence recorded) before it finished, so a flush begun after the store
            reports it finished covers them all.
        release: release each finished rollout (``succeeded``/``failed``) from the store once
            read (:mod:`agl_tinker.dispatch.reader`); ``False`` keeps them, for inspection.
        call_counts: the endpoint's calls served per attempt, when it runs in this process: each
            rollout read gets :data:`SERVED_CALLS_METADATA_KEY`, and its counts are released once
            read. ``None`` (an endpoint elsewhere): a lost *last* call goes unseen.
    """

    mode: RolloutMode = "train"
    resources_id: str | None = None
    rollout_config: RolloutConfig | None = None
    max_in_flight: int | None = None
    batch_timeout_s: float | None = None
    stall_timeout_s: float | None = None
    wait: WaitStrategy = "auto"
    long_poll_s: float = 0.1
    long_poll_slots: int = 4
    watchdog_s: float = 1.0
    store_retries: int = 3
    metadata: Mapping[str, Any] | None = None
    before_read: Callable[[], Awaitable[None]] | None = None
    release: bool = True
    call_counts: CallCounts | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 or None, got {self.max_in_flight}")
        if self.long_poll_slots < 1:
            raise ValueError(f"long_poll_slots must be >= 1, got {self.long_poll_slots}")
        if self.long_poll_s <= 0 or self.watchdog_s <= 0:
            raise ValueError("long_poll_s and watchdog_s must be positive")
        if self.batch_timeout_s is not None and self.batch_timeout_s <= 0:
            raise ValueError(f"batch_timeout_s must be positive or None, got {self.batch_timeout_s}")
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be positive or None, got {self.stall_timeout_s}")
        if self.store_retries < 0:
            raise ValueError(f"store_retries must be >= 0, got {self.store_retries}")


@dataclass(frozen=True)
class DispatchProgress:
    """Snapshot passed to the progress callback after every change."""

    total: int
    done: int
    in_flight: int
    not_started: int


@dataclass(frozen=True)
class RolloutOutcome(Generic[T]):
    """One finished rollout and what ``process`` made of it."""

    rollout_id: str
    group_index: int
    slot: int
    status: RolloutStatus
    attempt_status: AttemptStatus | None
    n_attempts: int
    n_spans: int
    n_duplicate_spans: int
    result: T
    end_time: float | None
    ready_time: float
    noticed_time: float | None = None
    cut_by_deadline: bool = False
    """Ended by ``stall_timeout_s``, not by its runner or the store: counts as ``timeout``."""

    @property
    def final_status(self) -> FinalStatus:
        """``status``, refined to ``timeout``/``unresponsive`` when that is why it failed
        (:func:`agl_tinker.core.rewards.final_status`, the one status rule)."""
        return final_status(
            self.status, attempt_status=self.attempt_status, cut_by_deadline=self.cut_by_deadline
        )

    @property
    def overhead_s(self) -> float | None:
        """Bridge overhead: from the store marking the rollout finished to its result being ready."""
        return None if self.end_time is None else self.ready_time - self.end_time

    @property
    def detect_s(self) -> float | None:
        """The part of ``overhead_s`` before the dispatcher learned the rollout had finished."""
        if self.end_time is None or self.noticed_time is None:
            return None
        return self.noticed_time - self.end_time

    @property
    def read_s(self) -> float | None:
        """The rest of ``overhead_s``: reading the rollout and its spans, and ``process``."""
        return None if self.noticed_time is None else self.ready_time - self.noticed_time


def outcome_of(
    rollout: Rollout,
    result: T,
    *,
    group_index: int,
    slot: int,
    n_spans: int,
    n_duplicate_spans: int,
    noticed_time: float | None,
    cut_by_deadline: bool = False,
) -> RolloutOutcome[T]:
    """The outcome of a finished rollout ``process`` just turned into ``result`` (ready now).

    Args:
        rollout: the finished rollout as ``process`` saw it (an ``AttemptedRollout`` when it ran).
        result: what ``process`` returned.
        group_index: the group (task index, or the continuous dispatcher's group key).
        slot: its place in the group.
        n_spans: spans handed to ``process``, after dedupe.
        n_duplicate_spans: copies dedupe dropped.
        noticed_time: ``time.time()`` its completion source saw it finished, if known.
        cut_by_deadline: ended by ``stall_timeout_s``.

    Returns:
        The outcome, ``ready_time`` set to now.
    """
    attempt = rollout.attempt if isinstance(rollout, AttemptedRollout) else None
    return RolloutOutcome(
        rollout_id=rollout.rollout_id,
        group_index=group_index,
        slot=slot,
        status=rollout.status,
        attempt_status=attempt.status if attempt is not None else None,
        n_attempts=attempt.sequence_id if attempt is not None else 0,
        n_spans=n_spans,
        n_duplicate_spans=n_duplicate_spans,
        result=result,
        end_time=rollout.end_time,
        ready_time=time.time(),
        noticed_time=noticed_time,
        cut_by_deadline=cut_by_deadline,
    )


@dataclass(frozen=True)
class GroupResult(Generic[T]):
    """The rollouts of one task, in slot order (fewer than group_size if the batch timed out)."""

    group_index: int
    task: Mapping[str, Any]
    outcomes: tuple[RolloutOutcome[T], ...]

    @property
    def results(self) -> list[T]:
        return [o.result for o in self.outcomes]


@dataclass(frozen=True)
class DispatchStats:
    """Where the time of a batch went; ``overheads_s`` are per rollout (see ``RolloutOutcome``)."""

    n_rollouts: int
    n_skipped: int
    status_counts: Mapping[str, int]
    wall_s: float
    enqueue_s: float
    wait_s: float
    process_s: float
    max_in_flight: int
    overheads_s: tuple[float, ...] = field(repr=False)
    detects_s: tuple[float, ...] = field(default=(), repr=False)
    reads_s: tuple[float, ...] = field(default=(), repr=False)
    wait: str = ""
    """How completions were learned by the end of the batch: ``events``, ``wait_any`` or ``long_poll``."""
    released: int = 0
    """Finished rollouts released from the store once read (0 for a store that cannot release)."""

    def overhead_ms(self, quantile: float) -> float | None:
        """Nearest-rank quantile of the per-rollout overhead, in milliseconds."""
        return _quantile_ms(self.overheads_s, quantile)

    def detect_ms(self, quantile: float) -> float | None:
        """Nearest-rank quantile of the overhead's detection part (``RolloutOutcome.detect_s``)."""
        return _quantile_ms(self.detects_s, quantile)

    def read_ms(self, quantile: float) -> float | None:
        """Nearest-rank quantile of the overhead's read-and-process part (``RolloutOutcome.read_s``)."""
        return _quantile_ms(self.reads_s, quantile)

    def summary(self) -> dict[str, Any]:
        """Flat numbers for logging."""
        return {
            "rollouts": self.n_rollouts,
            "skipped": self.n_skipped,
            **{f"status/{k}": v for k, v in sorted(self.status_counts.items())},
            "time/wall_s": self.wall_s,
            "time/enqueue_s": self.enqueue_s,
            "time/wait_s": self.wait_s,
            "time/process_s": self.process_s,
            "overhead_ms/p50": self.overhead_ms(0.5),
            "overhead_ms/p99": self.overhead_ms(0.99),
            "overhead_ms/detect_p50": self.detect_ms(0.5),
            "overhead_ms/read_p50": self.read_ms(0.5),
            "max_in_flight": self.max_in_flight,
            "released": self.released,
        }


@dataclass(frozen=True)
class BatchResult(Generic[T]):
    """What :func:`~agl_tinker.dispatch.batch.dispatch_batch` returns: the groups, then the stats."""

    groups: tuple[GroupResult[T], ...]
    stats: DispatchStats

    @property
    def outcomes(self) -> list[RolloutOutcome[T]]:
        return [o for g in self.groups for o in g.outcomes]


def _quantile_ms(values_s: Sequence[float], quantile: float) -> float | None:
    if not values_s:
        return None
    ordered = sorted(values_s)
    rank = min(len(ordered) - 1, max(0, round(quantile * (len(ordered) - 1))))
    return ordered[rank] * 1000.0
