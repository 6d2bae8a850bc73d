"""Futures with the SDK's own ``APIFuture`` class, completed by worker threads.

The SDK returns ``AwaitableConcurrentFuture`` objects (``.result()``, ``.result_async()``,
``await``); we hand out the very same class, so code written against the SDK sees no
difference. Latency is served by a timer after the work finishes, so concurrent calls overlap
the way network round trips do instead of queueing behind each other. The cost model
(``SimConfig``) adds two kinds of duration: ``cost_of(result)`` is served by the same timer
(overlapping, for sampling), ``hold_s`` keeps the worker, hence the executor's queue, busy
(serialised, for a training client's one-at-a-time queue).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

from .errors import FaultInjector

T = TypeVar("T")


def completed(value: T) -> AwaitableConcurrentFuture[T]:
    future: Future[T] = Future()
    future.set_result(value)
    return AwaitableConcurrentFuture(future)


class Dispatcher:
    """Runs one call on an executor, injecting the configured faults and latency."""

    def __init__(self, latency_s: float, faults: FaultInjector) -> None:
        self._latency_s = latency_s
        self._faults = faults

    def submit(
        self,
        executor: Executor,
        operation: str,
        fn: Callable[[], T],
        *,
        cost_of: Callable[[T], float] | None = None,
        hold_s: float = 0.0,
        effect_at_end: bool = False,
    ) -> Future[T]:
        """Run ``fn`` on ``executor``; its future completes no sooner than ``latency_s`` after now.

        ``hold_s``: the worker stays busy until ``hold_s`` after ``fn`` started (the executor's
        later work waits). ``cost_of(result)``: extra seconds before the future completes, not
        holding the worker (calls overlap). Neither applies to a call that failed.
        ``effect_at_end``: run ``fn`` when the hold ends instead of when it begins, for a call whose
        effect others see before its future completes (an in-flight save reaches clients that are
        already sampling): it takes effect as it completes. Its compute then adds to the hold.
        """
        future: Future[T] = Future()
        start = time.monotonic()

        def finish(result: T | None, error: BaseException | None) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def run() -> None:
            result: T | None = None
            error: BaseException | None = None
            began = time.monotonic()
            extra_s = 0.0
            try:
                self._faults.maybe_fail(operation)
                if effect_at_end and hold_s > 0:
                    time.sleep(hold_s)
                result = fn()
                if cost_of is not None:
                    extra_s = cost_of(result)
            except BaseException as exc:
                error = exc
            held = hold_s - (time.monotonic() - began)
            if error is None and held > 0:
                time.sleep(held)  # the modelled service is busy: the queue behind this call waits
            remaining = self._latency_s + extra_s - (time.monotonic() - start)
            if remaining > 0:
                timer = threading.Timer(remaining, finish, args=(result, error))
                timer.daemon = True
                timer.start()
            else:
                finish(result, error)

        executor.submit(run)
        return future

    def call(
        self,
        executor: Executor,
        operation: str,
        fn: Callable[[], T],
        *,
        cost_of: Callable[[T], float] | None = None,
        hold_s: float = 0.0,
    ) -> AwaitableConcurrentFuture[T]:
        return AwaitableConcurrentFuture(self.submit(executor, operation, fn, cost_of=cost_of, hold_s=hold_s))


class ClientFuture(AwaitableConcurrentFuture[T]):
    """Future of a client, as the SDK's client-creation methods return.

    Like the SDK's ``Backcompat*ClientFuture`` it may still be used as the client itself
    (deprecated: each such use warns with ``FutureWarning`` and waits for the client).
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        warnings.warn(
            f"Using the future as the client (`.{name}`) is deprecated; call .result() on it, "
            "or await it, to get the client first",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(self.result(), name)
