"""The SDK's own exception types, built the way its HTTP layer builds them.

Callers of the simulator catch exactly what they would catch with the live service:
``tinker.BadRequestError`` (400) for invalid input, ``tinker.NotFoundError`` (404) for unknown
checkpoints, ``tinker.ConflictError`` (409) for a copy onto an existing checkpoint, and ``tinker.InternalServerError`` (503, retryable by the SDK's own rules) for
injected transient failures.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Collection

import httpx
import tinker

SIM_BASE_URL = "https://sim.tinker.invalid"


def _response(status: int, path: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", f"{SIM_BASE_URL}/api/v1/{path}")
    return httpx.Response(status, request=request, json={"detail": message}, headers=headers)


def bad_request(message: str, path: str = "request") -> tinker.BadRequestError:
    return tinker.BadRequestError(message, response=_response(400, path, message), body={"detail": message})


def not_found(message: str, path: str = "weights") -> tinker.NotFoundError:
    return tinker.NotFoundError(message, response=_response(404, path, message), body={"detail": message})


def conflict(message: str, path: str = "request") -> tinker.ConflictError:
    """409: the request clashes with what exists. ``x-should-retry: false``, which the wire server
    passes on: the SDK retries a bare 409 (its lock timeout), and asking again changes nothing."""
    response = _response(409, path, message, headers={"x-should-retry": "false"})
    return tinker.ConflictError(message, response=response, body={"detail": message})


def gone(message: str, path: str = "session") -> tinker.APIStatusError:
    """410: the session finished or expired (the SDK stops heartbeating on it)."""
    return tinker.APIStatusError(message, response=_response(410, path, message), body={"detail": message})


def transient(message: str, path: str = "request") -> tinker.InternalServerError:
    return tinker.InternalServerError(
        message, response=_response(503, path, message), body={"detail": message}
    )


class FaultInjector:
    """Seeded coin flips deciding which calls fail, shared by all clients of one service."""

    def __init__(self, rate: float, seed: int, operations: Collection[str] = ()) -> None:
        self._rate = rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._operations = frozenset(operations)
        self.injected: Counter[str] = Counter()
        """Failures raised so far, by operation name."""

    def maybe_fail(self, operation: str) -> None:
        """Raise a transient error for ``operation`` with the configured probability (seeded)."""
        if self._rate <= 0.0 or (self._operations and operation not in self._operations):
            return
        with self._lock:
            fail = self._rng.random() < self._rate
            if fail:
                self.injected[operation] += 1
        if fail:
            raise transient(f"simulated transient failure in {operation}", path=operation)
