"""Per-sampling-session completion feeds: what ``/api/v1/retrieve_futures`` long-polls for.

With ``sample_use_retrieve_futures`` on in the served client config, the SDK runs one poller per
(sampling session, clone) instead of polling each sample's future: it long-polls this feed for
completions after its cursor, then fetches each finished sample's payload with ``retrieve_future``,
and reports the ids it fetched (``retrieved_request_ids``) so their payloads can be dropped. Events
at or before the cursor a poll sends have been seen and are trimmed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tinker import types
from tinker.types.future_completion import FutureCompletion, FutureFailed, FutureFinished

from .futures import Promise

CLONE_STRIDE = 1_000_000_000  # a cloned SamplingClient's seq ids start at clone * this (the SDK's rule)


class Feed:
    """One (sampling session, clone)'s completions in the order they happened."""

    def __init__(self) -> None:
        self._events: list[tuple[int, FutureCompletion]] = []
        self._cursor = 0
        self._changed = asyncio.Event()

    def watch(self, promise: Promise) -> None:
        """Report ``promise``'s completion (finished or failed) once it settles."""
        promise.on_settled(lambda: self._complete(promise))

    def _complete(self, promise: Promise) -> None:
        _, error = promise.outcome()
        completion: FutureCompletion = (
            FutureFailed(request_id=promise.request_id)
            if error is not None
            else FutureFinished(request_id=promise.request_id)
        )
        self._cursor += 1
        self._events.append((self._cursor, completion))
        self._changed.set()

    async def poll(self, prev_cursor: int, timeout: float) -> types.FuturesRetrieveResponse:
        """Completions after ``prev_cursor`` (trimming those at or before it), waiting up to
        ``timeout`` seconds for the first one."""
        self._events = [(c, e) for c, e in self._events if c > prev_cursor]
        if not self._events and timeout > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        cursor = self._events[-1][0] if self._events else max(prev_cursor, 0)
        return types.FuturesRetrieveResponse(completions=[e for _, e in self._events], cursor=cursor)


class Feeds:
    """Every live feed, by ``(sampling_session_id, cloned_sampler_id)``."""

    def __init__(self, session_of: Callable[[str], str]) -> None:
        self._feeds: dict[tuple[str, int], Feed] = {}
        self._session_of = session_of

    def feed(self, sampling_session_id: str, clone: int) -> Feed:
        return self._feeds.setdefault((sampling_session_id, clone), Feed())

    def watch(self, sampling_session_id: str, seq_id: int | None, promise: Promise) -> None:
        self.feed(sampling_session_id, (seq_id or 0) // CLONE_STRIDE).watch(promise)

    def release(self, session_id: str) -> None:
        for key in [k for k in self._feeds if self._session_of(k[0]) == session_id]:
            del self._feeds[key]
