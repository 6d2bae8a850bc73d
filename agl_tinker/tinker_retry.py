"""Bounded retries of Tinker calls on transient errors, counted per call kind.

Which errors are transient is the tinker SDK's own rule, reused rather than restated: the
exception types of its ``RetryConfig.retryable_exceptions`` (timeouts, ``APIConnectionError``)
and the status codes of ``retry_handler.is_retryable_status_code`` (408, 409, 429, 5xx), plus a
bare ``ConnectionError`` (a reset connection). Backoff is the SDK's formula too (``RetryHandler``:
``min(base * 2**n, max)`` with +-``jitter_factor`` jitter, its default base 0.5 s, cap 10 s), but
bounded in attempts: the SDK's handler retries until no progress for two hours.

A retry is safe only when the failed call had no effect. The SDK assumes that of these errors
(it retries the same ones at the HTTP level), and so does :class:`Retrier`; so that a retried
``forward_backward`` cannot land after the ``optim_step`` it should precede, the client wrappers
here resolve each call before returning its future: calls of one client run one at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tinker
from tinker._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture
from tinker.lib.retry_handler import RetryConfig, is_retryable_status_code

__all__ = [
    "Retrier",
    "RetryPolicy",
    "RetryingSamplingClient",
    "RetryingTrainingClient",
    "TinkerCallError",
    "is_transient",
]

logger = logging.getLogger(__name__)

_SDK_RETRY = RetryConfig()
_RETRYABLE_TYPES: tuple[type[BaseException], ...] = (*_SDK_RETRY.retryable_exceptions, ConnectionError)


def is_transient(exc: BaseException) -> bool:
    """Whether the tinker SDK would retry ``exc`` (or it is a reset connection)."""
    if isinstance(exc, _RETRYABLE_TYPES):
        return True
    return isinstance(exc, tinker.APIStatusError) and is_retryable_status_code(exc.status_code)


class TinkerCallError(RuntimeError):
    """A Tinker call failed for good: a non-retryable error, or transient errors on every attempt.

    ``kind`` names the call (``optim_step``, ``sample``...), ``attempts`` how often it was tried;
    the SDK's exception is ``__cause__`` (also ``error``).
    """

    def __init__(self, kind: str, attempts: int, error: BaseException) -> None:
        why = "non-retryable error" if attempts == 1 and not is_transient(error) else "transient errors"
        super().__init__(f"tinker call {kind} failed after {attempts} attempt(s) ({why}): {error!r}")
        self.kind = kind
        self.attempts = attempts
        self.error = error


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried (SDK defaults for the delays)."""

    max_attempts: int = 6
    """Tries per call, the first included; 1 disables retries."""
    base_delay_s: float = INITIAL_RETRY_DELAY
    max_delay_s: float = MAX_RETRY_DELAY
    jitter: float = _SDK_RETRY.jitter_factor

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("delays must be >= 0 and jitter in [0, 1]")

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number ``retry`` (0-based): the SDK's capped exponential with jitter."""
        delay = min(self.base_delay_s * 2.0 ** min(retry, 60), self.max_delay_s)
        jitter = delay * self.jitter * (2 * rng.random() - 1)
        return max(0.0, min(delay + jitter, self.max_delay_s))


async def _resolve(value: Any) -> Any:
    """Await ``value`` until it is not awaitable: a call's coroutine, then the future it returned."""
    while inspect.isawaitable(value):
        value = await value
    return value


def _done(value: Any) -> AwaitableConcurrentFuture[Any]:
    """A completed SDK future (``result()``, ``result_async()``, ``await``) holding ``value``."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(value)
    return AwaitableConcurrentFuture(future)


class Retrier:
    """Runs Tinker calls under one :class:`RetryPolicy` and counts retries and failures per kind."""

    def __init__(self, policy: RetryPolicy | None = None, *, seed: int | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self._rng = random.Random(seed)
        self.retries: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._reported: tuple[Counter[str], Counter[str]] = (Counter(), Counter())

    async def call(self, kind: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` awaited to its final value (coroutine, then SDK future), retried if transient.

        Raises :class:`TinkerCallError` naming ``kind`` at once for a non-retryable error, or
        after ``max_attempts`` transient ones.
        """
        attempts = self.policy.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await _resolve(fn())
            except Exception as exc:
                if not is_transient(exc) or attempt == attempts:
                    self.failures[kind] += 1
                    raise TinkerCallError(kind, attempt, exc) from exc
                self.retries[kind] += 1
                delay = self.policy.delay_s(attempt - 1, self._rng)
                logger.warning(
                    "tinker %s failed (%s); retry %d/%d in %.2fs",
                    kind,
                    type(exc).__name__,
                    attempt,
                    attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)  # ok: backoff before retrying a transient Tinker error
        raise AssertionError("unreachable")

    def take_metrics(self) -> dict[str, int]:
        """Retries and failures since the previous call, as ``tinker/retries/<kind>`` and
        ``tinker/failures/<kind>`` (kinds with any), plus ``tinker/retries`` and ``tinker/failures``
        totals (always present)."""
        last_retries, last_failures = self._reported
        retries, failures = self.retries - last_retries, self.failures - last_failures
        self._reported = (Counter(self.retries), Counter(self.failures))
        metrics = {"tinker/retries": sum(retries.values()), "tinker/failures": sum(failures.values())}
        metrics.update({f"tinker/retries/{k}": v for k, v in sorted(retries.items())})
        metrics.update({f"tinker/failures/{k}": v for k, v in sorted(failures.items())})
        return metrics


class _Wrapped:
    """Forwards everything not overridden to the SDK client it wraps."""

    def __init__(self, inner: Any, retrier: Retrier) -> None:
        self._inner = inner
        self._retrier = retrier

    @property
    def inner(self) -> Any:
        """The wrapped SDK client."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RetryingSamplingClient(_Wrapped):
    """A ``SamplingClient`` whose ``sample_async``/``compute_logprobs_async`` retry transient errors.

    Each submits through the SDK's non-deprecated method (which returns an ``APIFuture``) and
    awaits its result, resubmitting after a transient failure.
    """

    async def sample_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._retrier.call("sample", lambda: self._inner.sample(*args, **kwargs))

    async def compute_logprobs_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._retrier.call(
            "compute_logprobs", lambda: self._inner.compute_logprobs(*args, **kwargs)
        )


class RetryingTrainingClient(_Wrapped):
    """A ``TrainingClient`` whose training and saving calls retry transient errors.

    Each ``*_async`` call submits through the SDK method without ``_async`` and resolves before it
    returns (a completed SDK future), so the cookbook's ``train_step`` and
    ``save_checkpoint_async`` use it unchanged and a retried call never overtakes the next one.
    """

    async def _resolved(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self._inner, kind)
        return _done(await self._retrier.call(kind, lambda: bound(*args, **kwargs)))

    async def forward_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._resolved("forward", *args, **kwargs)

    async def forward_backward_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._resolved("forward_backward", *args, **kwargs)

    async def optim_step_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._resolved("optim_step", *args, **kwargs)

    async def save_state_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._resolved("save_state", *args, **kwargs)

    async def save_weights_for_sampler_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._resolved("save_weights_for_sampler", *args, **kwargs)

    async def save_weights_and_get_sampling_client(self, **kwargs: Any) -> RetryingSamplingClient:
        """Await it (like the SDK's future of the client); the client it gives retries too."""
        client = await self._retrier.call(
            "save_weights_and_get_sampling_client",
            lambda: self._inner.save_weights_and_get_sampling_client(**kwargs),
        )
        return RetryingSamplingClient(client, self._retrier)
