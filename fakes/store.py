"""A fault-injecting LightningStore for reliability tests.

``FaultyStore`` wraps a real store and delegates every call to it, injecting on request:

* latency before each call (all methods, or per method),
* transient errors (``TransientStoreError``, a ``ConnectionError``) at a seeded rate on chosen methods,
  raised *before* the call reaches the real store, so a retry is always safe,
* dropped span writes (acknowledged but never stored) and duplicated span writes,
* hung attempts: the terminal ``update_attempt`` of the first ``hang_attempts`` attempts is
  swallowed, as if the runner died after working, so only the store's timeout can end them.

Everything is decided by one ``random.Random(seed)``, so a failing test replays exactly; the
``injected`` counters say what was actually injected. Only the Agent-lightning API is used.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agentlightning.store.base import LightningStore, LightningStoreCapabilities
from agentlightning.types import Span

__all__ = ["FaultyStore", "TransientStoreError"]


class TransientStoreError(ConnectionError):
    """An injected, retryable failure (what a dropped connection looks like to a caller)."""


# Every coroutine method of the LightningStore interface, delegated unless overridden below.
_STORE_METHODS: tuple[str, ...] = tuple(
    name
    for name, value in vars(LightningStore).items()
    if not name.startswith("_") and asyncio.iscoroutinefunction(value)
)
_SPAN_WRITES = frozenset({"add_span", "add_many_spans"})
_TERMINAL_ATTEMPT = frozenset({"succeeded", "failed"})


class FaultyStore(LightningStore):
    """Delegates to ``inner``; see the module docstring for the knobs.

    Args:
        inner: the real store.
        seed: seeds every random decision.
        latency_s: added before every call.
        latency_by_method: per-method latency, overriding ``latency_s``.
        error_rate: probability that a call to one of ``error_methods`` raises ``TransientStoreError``.
        error_methods: method names that may fail (empty: none).
        drop_span_rate: probability that a span write is acknowledged but not stored.
        duplicate_span_rate: probability that a span write is sent to the real store twice.
        hang_attempts: this many attempts (in dequeue order) never record a terminal status.
    """

    def __init__(
        self,
        inner: LightningStore,
        *,
        seed: int = 0,
        latency_s: float = 0.0,
        latency_by_method: Mapping[str, float] | None = None,
        error_rate: float = 0.0,
        error_methods: Collection[str] = (),
        drop_span_rate: float = 0.0,
        duplicate_span_rate: float = 0.0,
        hang_attempts: int = 0,
    ) -> None:
        unknown = (set(error_methods) | set(latency_by_method or {})) - set(_STORE_METHODS)
        if unknown:
            raise ValueError(f"not LightningStore methods: {sorted(unknown)}")
        for name, rate in (
            ("error_rate", error_rate),
            ("drop_span_rate", drop_span_rate),
            ("duplicate_span_rate", duplicate_span_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        self.inner = inner
        self._rng = random.Random(seed)
        self._latency_s = latency_s
        self._latency_by_method = dict(latency_by_method or {})
        self._error_rate = error_rate
        self._error_methods = frozenset(error_methods)
        self._drop_span_rate = drop_span_rate
        self._duplicate_span_rate = duplicate_span_rate
        self._hang_budget = hang_attempts
        self.hung_attempts: set[tuple[str, str]] = set()
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        return self.inner.capabilities

    def otlp_traces_endpoint(self) -> str:
        return self.inner.otlp_traces_endpoint()

    async def _before(self, method: str) -> None:
        """Latency, then maybe a transient error; called before delegating ``method``."""
        self.calls[method] += 1
        delay = self._latency_by_method.get(method, self._latency_s)
        if delay > 0:
            await asyncio.sleep(delay)  # ok: injected latency is the point of this fake
        if method in self._error_methods and self._rng.random() < self._error_rate:
            self.injected[f"error:{method}"] += 1
            raise TransientStoreError(f"injected transient failure in {method}")

    # ---- span writes: drop or duplicate -------------------------------------------------------

    async def add_span(self, span: Span) -> Span | None:
        await self._before("add_span")
        if self._rng.random() < self._drop_span_rate:
            self.injected["dropped_span"] += 1
            return span
        stored = await self.inner.add_span(span)
        if self._rng.random() < self._duplicate_span_rate:
            self.injected["duplicated_span"] += 1
            await self.inner.add_span(span)
        return stored

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        await self._before("add_many_spans")
        kept: list[Span] = []
        for span in spans:
            if self._rng.random() < self._drop_span_rate:
                self.injected["dropped_span"] += 1
            else:
                kept.append(span)
        stored = await self.inner.add_many_spans(kept) if kept else []
        again = [s for s in kept if self._rng.random() < self._duplicate_span_rate]
        if again:
            self.injected["duplicated_span"] += len(again)
            await self.inner.add_many_spans(again)
        return stored

    # ---- hung attempts -------------------------------------------------------------------------

    async def dequeue_rollout(self, worker_id: str | None = None) -> Any:
        await self._before("dequeue_rollout")
        attempted = await self.inner.dequeue_rollout(worker_id=worker_id)
        if attempted is not None:
            self._maybe_hang(attempted.rollout_id, attempted.attempt.attempt_id)
        return attempted

    async def dequeue_many_rollouts(self, *, limit: int = 1, worker_id: str | None = None) -> Any:
        await self._before("dequeue_many_rollouts")
        attempted = await self.inner.dequeue_many_rollouts(limit=limit, worker_id=worker_id)
        for a in attempted:
            self._maybe_hang(a.rollout_id, a.attempt.attempt_id)
        return attempted

    def _maybe_hang(self, rollout_id: str, attempt_id: str) -> None:
        if self._hang_budget > 0:
            self._hang_budget -= 1
            self.hung_attempts.add((rollout_id, attempt_id))

    async def update_attempt(self, rollout_id: str, attempt_id: str, *args: Any, **kwargs: Any) -> Any:
        await self._before("update_attempt")
        status = kwargs.get("status", args[0] if args else None)
        if status in _TERMINAL_ATTEMPT and self.hung_attempts:
            resolved = attempt_id
            if attempt_id == "latest":
                latest = await self.inner.get_latest_attempt(rollout_id)
                resolved = latest.attempt_id if latest is not None else attempt_id
            if (rollout_id, resolved) in self.hung_attempts:
                self.injected["hung_attempt_update"] += 1
                attempts = await self.inner.query_attempts(rollout_id)
                return next(a for a in attempts if a.attempt_id == resolved)
        return await self.inner.update_attempt(rollout_id, attempt_id, *args, **kwargs)


def _delegate(name: str) -> Any:
    async def method(self: FaultyStore, *args: Any, **kwargs: Any) -> Any:
        await self._before(name)
        return await getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Delegates ``{name}`` to the wrapped store, with injected faults."
    return method


for _name in _STORE_METHODS:
    if _name not in vars(FaultyStore):
        setattr(FaultyStore, _name, _delegate(_name))
