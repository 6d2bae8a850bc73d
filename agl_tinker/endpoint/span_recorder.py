"""Writes LLM-call spans to the LightningStore off the request path, in batches.

A request only appends a record to a buffer (thread-safe, O(1)); one writer task per recorder
drains it, allocating sequence ids and adding spans in one store call each per batch. The writer
lingers ``linger_s`` after the first record of a batch: a store call has a fixed cost (a lock
and a copy in-process, a round trip over HTTP) that one span per call would pay on every request, and a
write that runs while the next request arrives delays it. ``flush`` skips the linger. A store error
is logged with the batch size and the batch is kept for the next try, so a slow or failing store
never delays or fails an answer; :meth:`flush` waits until everything recorded so far is stored.

Nothing waits forever on a store that is gone: a batch is tried ``max_attempts`` times, then
dropped (counted in :attr:`SpanRecorder.dropped`, logged as an error); a 4xx answer (the store
does not know the rollout) is a refusal, never retried; :meth:`close` gives the last flush
``close_timeout_s`` and then drops what is left, saying how much.

The recorder also counts the calls recorded per rollout attempt (:meth:`SpanRecorder.served_calls`):
every call the endpoint answers on a rollout path is recorded here, so a reader whose spans hold
fewer calls knows the rest were lost. Counts stay until :meth:`SpanRecorder.forget` releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from agentlightning.store.base import LightningStore
from agentlightning.types import Span

from agl_tinker.spans import LLM_CALL_SPAN_NAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallRecord:
    """One LLM call to store: where it belongs, when it ran, and its span attributes."""

    rollout_id: str
    attempt_id: str
    attributes: dict[str, Any]
    start_time: float
    end_time: float
    sequence_id: int | None = None
    """Already allocated by the caller (LLMProxy's middleware does); else allocated per batch."""


class SpanRecorder:
    """Batched, non-blocking span writer bound to the event loop it is started on."""

    def __init__(
        self,
        store: LightningStore,
        *,
        max_batch: int = 512,
        retry_delay_s: float = 0.2,
        linger_s: float = 0.02,
        max_attempts: int = 3,
        close_timeout_s: float = 5.0,
    ) -> None:
        if max_batch < 1 or linger_s < 0 or max_attempts < 1 or close_timeout_s <= 0:
            raise ValueError(
                "need max_batch >= 1, linger_s >= 0, max_attempts >= 1 and close_timeout_s > 0, got "
                f"{max_batch}, {linger_s}, {max_attempts}, {close_timeout_s}"
            )
        self.store = store
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.retry_delay_s = retry_delay_s
        self.max_attempts = max_attempts
        self.close_timeout_s = close_timeout_s
        self._pending: list[CallRecord] = []
        self._lock = threading.Lock()
        self._recorded = 0
        self._written = 0
        self._dropped = 0
        self._failed = 0
        self._served: dict[str, dict[str, int]] = {}  # rollout id -> attempt id -> calls recorded
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._urgent: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def written(self) -> int:
        """Spans stored so far."""
        return self._written

    @property
    def dropped(self) -> int:
        """Spans not stored: refused by the store (unknown rollout or attempt: never retried), or
        still failing after ``max_attempts`` tries, or left at close; each logged."""
        return self._dropped

    @property
    def failed(self) -> int:
        """Span writes that failed with a store error, counted per span and per try: they are
        retried (a span can count here more than once), and dropped after the last try."""
        return self._failed

    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task = asyncio.create_task(self._run(), name="agl-tinker-span-recorder")

    def record(self, record: CallRecord) -> None:
        """Queue a call for storage; callable from any thread, never blocks on the store."""
        with self._lock:
            self._pending.append(record)
            self._recorded += 1
            attempts = self._served.setdefault(record.rollout_id, {})
            attempts[record.attempt_id] = attempts.get(record.attempt_id, 0) + 1
            full = len(self._pending) >= self.max_batch
        loop, wake, urgent = self._loop, self._wake, self._urgent
        if loop is None or wake is None or urgent is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for event in (wake, urgent) if full else (wake,):
            if running is loop:
                event.set()
            else:
                loop.call_soon_threadsafe(event.set)

    def served_calls(self, rollout_id: str, attempt_id: str) -> int:
        """Calls recorded for this rollout attempt since it was last forgotten (0 if none);
        callable from any thread."""
        with self._lock:
            return self._served.get(rollout_id, {}).get(attempt_id, 0)

    def forget(self, rollout_ids: Iterable[str]) -> None:
        """Release the call counts of these rollouts (every attempt); callable from any thread."""
        with self._lock:
            for rollout_id in rollout_ids:
                self._served.pop(rollout_id, None)

    @property
    def counted_rollouts(self) -> int:
        """Rollouts whose call counts are held (not yet forgotten)."""
        return len(self._served)

    async def flush(self) -> None:
        """Wait until every call recorded before this one is stored (or refused by the store)."""
        if self._task is None or self._progress is None or self._wake is None or self._urgent is None:
            raise RuntimeError("SpanRecorder.flush() before start()")
        with self._lock:
            target = self._recorded
        self._urgent.set()
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(
                lambda: self._written + self._dropped >= target or self._task is None
            )

    async def close(self) -> None:
        """Flush (for at most ``close_timeout_s``), then stop the writer; spans left are dropped."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await self.flush()
        except TimeoutError:
            with self._lock:
                left = self._recorded - self._written - self._dropped  # queued or inside a store call
                self._pending.clear()
            self._dropped += left
            logger.error(
                "span recorder closed after %.1fs with %d LLM-call spans not stored (the store is "
                "not answering)",
                self.close_timeout_s,
                left,
            )
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        assert self._wake is not None and self._urgent is not None and self._progress is not None
        while True:
            await self._wake.wait()
            if self.linger_s > 0 and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.linger_s)
            self._wake.clear()
            self._urgent.clear()
            while True:
                with self._lock:
                    batch = self._pending[: self.max_batch]
                    del self._pending[: len(batch)]
                if not batch:
                    break
                stored, refused = await self._write_with_retries(batch)
                self._written += stored
                self._dropped += refused
                async with self._progress:
                    self._progress.notify_all()

    async def _write_with_retries(self, batch: Sequence[CallRecord]) -> tuple[int, int]:
        """Store ``batch``: (stored, not stored); gives up after ``max_attempts`` failed tries."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self._write(batch)
            except Exception as exc:
                if _is_refusal(exc):  # dropped, not failed: a refusal is never retried
                    logger.warning("store refused %d LLM-call spans: %s", len(batch), exc)
                    return 0, len(batch)
                self._failed += len(batch)
                if attempt == self.max_attempts:
                    logger.error(
                        "storing %d LLM-call spans failed %d times, dropping them: %r",
                        len(batch),
                        attempt,
                        exc,
                    )
                    return 0, len(batch)
                logger.warning("storing %d LLM-call spans failed (%r); retry %d", len(batch), exc, attempt)
                # ok: backoff before retrying a failed store write
                await asyncio.sleep(self.retry_delay_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _write(self, batch: Sequence[CallRecord]) -> tuple[int, int]:
        missing = [(r.rollout_id, r.attempt_id) for r in batch if r.sequence_id is None]
        allocated = iter(await self.store.get_many_span_sequence_ids(missing) if missing else [])
        spans = [
            Span.from_attributes(
                attributes=r.attributes,
                rollout_id=r.rollout_id,
                attempt_id=r.attempt_id,
                sequence_id=r.sequence_id if r.sequence_id is not None else next(allocated),
                name=LLM_CALL_SPAN_NAME,
                start_time=r.start_time,
                end_time=r.end_time,
            )
            for r in batch
        ]
        try:
            await self.store.add_many_spans(spans)
            return len(spans), 0
        except Exception as exc:
            if not _is_refusal(exc):
                raise
        # One unknown rollout/attempt must not sink the batch: store span by span, count refusals.
        refused = 0
        for span in spans:
            try:
                await self.store.add_span(span)
            except Exception as exc:
                if not _is_refusal(exc):
                    raise
                refused += 1
                logger.warning("store refused span of rollout %s: %s", span.rollout_id, exc)
        return len(spans) - refused, refused


def _is_refusal(exc: BaseException) -> bool:
    """The store refused the write itself (unknown rollout/attempt): retrying cannot help.

    In process that is a ``ValueError``; over HTTP, a 4xx answer other than 408 (timeout) and 429
    (too many requests).
    """
    if isinstance(exc, ValueError):
        return True
    return (
        isinstance(exc, aiohttp.ClientResponseError)
        and 400 <= exc.status < 500
        and exc.status not in (408, 429)
    )
