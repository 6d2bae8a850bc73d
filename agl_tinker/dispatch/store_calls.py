"""Store calls as dispatch makes them: bounded retries, a bounded cancel of unfinished work, span dedupe.

Used by both dispatchers (:mod:`agl_tinker.dispatch.batch`, :mod:`agl_tinker.dispatch.continuous`)
and by the completion sources (:mod:`agl_tinker.dispatch.completion`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aiohttp
from agentlightning.store.base import LightningStore

from agl_tinker.dispatch.types import StoreCallError

__all__ = ["TRANSIENT_ERRORS", "StoreCaller", "cancel_unfinished"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    aiohttp.ClientError,
)
"""Errors of a store call worth retrying: the network, not the store's answer."""

CANCEL_BUDGET_S = 5.0
"""Longest :func:`cancel_unfinished` spends cancelling: a dead store must not hold up shutdown."""


class StoreCaller:
    """Store calls with bounded retries on transient (network) errors.

    Args:
        retries: retries after the first failure (``DispatchConfig.store_retries``); the delay
            between attempts starts at 20 ms and doubles.
    """

    def __init__(self, retries: int) -> None:
        self.retries = retries

    async def __call__(self, what: str, fn: Callable[[], Awaitable[R]]) -> R:
        """Await ``fn()``, retrying it on :data:`TRANSIENT_ERRORS`.

        Args:
            what: the call's name, for logs and the error.
            fn: makes a fresh awaitable per attempt.

        Returns:
            What ``fn()`` returned.

        Raises:
            StoreCallError: every attempt failed with a transient error (the last one is chained).
        """
        delay = 0.02
        for attempt in range(self.retries + 1):
            try:
                return await fn()
            except TRANSIENT_ERRORS as e:
                if attempt == self.retries:
                    raise StoreCallError(f"store call {what} failed {attempt + 1} times: {e!r}") from e
                logger.warning("store call %s failed (%r); retry %d/%d", what, e, attempt + 1, self.retries)
                await asyncio.sleep(delay)  # ok: exponential backoff between retries of a failed call
                delay *= 2
        raise AssertionError("unreachable")


async def cancel_unfinished(store: LightningStore, rollout_ids: Sequence[str], *, context: str = "") -> None:
    """Mark ``rollout_ids`` cancelled in the store, so runners do not pick up orphaned work.

    Best effort, within :data:`CANCEL_BUDGET_S`: a failure (or the budget running out) is logged,
    never raised, because this runs while a dispatcher is already failing or shutting down.

    Args:
        store: the store the rollouts were enqueued in.
        rollout_ids: the rollouts still unfinished; nothing is called when empty.
        context: appended to the warning's "unfinished rollouts", e.g. ``" after a failure"``.
    """
    ids = list(rollout_ids)
    if not ids:
        return
    try:
        async with asyncio.timeout(CANCEL_BUDGET_S):
            for rid in ids:
                await store.update_rollout(rollout_id=rid, status="cancelled")
    except Exception as e:
        logger.warning("could not cancel %d unfinished rollouts%s: %r", len(ids), context, e)
