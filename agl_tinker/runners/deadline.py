"""The runner :func:`agl_tinker.algorithm.fast_runner` builds: Agent-lightning's, plus a rollout deadline.

Agent-lightning 0.3.0's ``LitAgentRunner`` awaits the agent for as long as it takes. The store's
watchdog marks an attempt ``timeout`` once it runs past ``RolloutConfig.timeout_seconds``, but the
runner stays inside the agent: an agent that hangs holds its runner forever, and the rollouts
queued behind it never start. :class:`DeadlineRunner` cancels the agent where it runs when the
attempt's ``timeout_seconds`` have passed, reports the attempt ``timeout`` (never the
``succeeded``/``failed`` the stock runner writes while unwinding), and moves on to the next
rollout. The deadline covers the agent and its spans: once the runner starts its closing write of
an attempt it did not cut, the attempt is finished and the deadline no longer applies (it was
rewritten ``timeout`` when the deadline passed while the store confirmed that write). An agent
that blocks its event loop (synchronous code) cannot be cancelled this way; the store's watchdog
still marks it. It also fetches each resources snapshot once
(:mod:`agl_tinker.runners.resources_cache`), unless built with ``cache_resources=False``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from agentlightning.runner import LitAgentRunner
from agentlightning.store.base import LightningStore
from agentlightning.types import AttemptedRollout

from agl_tinker.runners.resources_cache import CachingResourcesStore, ResourcesCache

__all__ = ["DeadlineRunner", "remaining_s"]

logger = logging.getLogger(__name__)

_CLOSING = ("succeeded", "failed", "timeout")


def remaining_s(rollout: AttemptedRollout, now: float | None = None) -> float | None:
    """Seconds this attempt may still run under its ``timeout_seconds``; ``None`` without one.

    Counted from the attempt's start as the store recorded it, never below 0.
    """
    limit = rollout.config.timeout_seconds
    if limit is None:
        return None
    elapsed = (time.time() if now is None else now) - rollout.attempt.start_time
    return max(0.0, limit - max(0.0, elapsed))


class _TimeoutReportingStore:
    """The runner's store, except that a cut attempt's closing status is written as ``timeout``.

    ``LitAgentRunner._step_impl`` ends every attempt with ``update_attempt(status="succeeded"
    | "failed")``, also when it unwinds from a cancellation; for an attempt the deadline cut, that
    write becomes ``status="timeout"``, so no reader ever sees it succeeded or plainly failed.
    Before the closing write of an attempt not cut it calls ``closing(attempt_id)``, which disarms
    the attempt's deadline: a finished attempt's status is never overwritten. Everything else is
    the wrapped store's own.
    """

    def __init__(
        self, store: LightningStore, cut: set[str], closed: dict[str, str], closing: Callable[[str], None]
    ) -> None:
        self._store = store
        self._cut = cut
        self._closed = closed
        self._closing = closing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def update_attempt(self, rollout_id: str, attempt_id: str, **kwargs: Any) -> Any:
        if kwargs.get("status") in ("succeeded", "failed"):
            if attempt_id in self._cut:
                kwargs["status"] = "timeout"
            else:
                self._closing(attempt_id)
        result = await self._store.update_attempt(rollout_id, attempt_id, **kwargs)
        if kwargs.get("status") in _CLOSING:
            self._closed[attempt_id] = kwargs["status"]
        return result


class DeadlineRunner(LitAgentRunner[Any]):
    """``LitAgentRunner`` that cancels a rollout at its ``timeout_seconds`` and reports ``timeout``.

    Takes ``LitAgentRunner``'s arguments, plus ``on_finished(worker_id, rollout_id, status)``:
    called once per rollout this runner ran, with the closing status it wrote (``succeeded``,
    ``failed`` or ``timeout``; not called when that write failed), and ``cache_resources``: fetch
    each resources snapshot once (``resources_cache``; the default), or before every rollout as
    the stock runner does (``False``). ``timed_out`` counts the attempts this runner cut;
    ``resources`` is its snapshot cache (``None`` without one).
    """

    def __init__(
        self,
        *args: Any,
        on_finished: Callable[[str, str, str], None] | None = None,
        cache_resources: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._cut: set[str] = set()
        self._closed: dict[str, str] = {}
        self._deadlines: dict[str, asyncio.TimerHandle] = {}  # armed per attempt, while it runs
        self._on_finished = on_finished
        self.timed_out = 0
        self.resources = ResourcesCache() if cache_resources else None

    def get_store(self) -> LightningStore:
        # Structural stand-ins for the store: every method but update_attempt (and
        # get_resources_by_id, with the cache) is the store's own.
        store = super().get_store()
        if self.resources is not None:
            store = cast(LightningStore, CachingResourcesStore(store, self.resources))
        return cast(LightningStore, _TimeoutReportingStore(store, self._cut, self._closed, self._disarm))

    def _disarm(self, attempt_id: str) -> None:
        """The attempt is closing: its deadline no longer applies."""
        timer = self._deadlines.pop(attempt_id, None)
        if timer is not None:
            timer.cancel()

    async def _step_impl(self, next_rollout: AttemptedRollout, raise_on_exception: bool = False) -> str:
        attempt_id = next_rollout.attempt.attempt_id
        try:
            return await self._step_within_deadline(next_rollout, raise_on_exception)
        finally:
            status = self._closed.pop(attempt_id, None)
            if status is not None and self._on_finished is not None:
                self._on_finished(self.get_worker_id(), next_rollout.rollout_id, status)

    async def _step_within_deadline(self, next_rollout: AttemptedRollout, raise_on_exception: bool) -> str:
        budget = remaining_s(next_rollout)
        if budget is None:
            return await super()._step_impl(next_rollout, raise_on_exception)
        task = asyncio.current_task()
        assert task is not None
        attempt_id = next_rollout.attempt.attempt_id
        expired = False

        def cut() -> None:
            nonlocal expired
            expired = True
            self._cut.add(attempt_id)
            task.cancel()

        self._deadlines[attempt_id] = asyncio.get_running_loop().call_later(budget, cut)
        try:
            return await super()._step_impl(next_rollout, raise_on_exception)
        except asyncio.CancelledError:
            if not expired or task.uncancel() > 0:
                raise  # cancelled from outside (the runner is stopping), not by the deadline
            self.timed_out += 1
            await self._report_timeout(next_rollout)
            logger.warning(
                "%s rollout %s passed its timeout (%.1fs): cancelled, reported as timeout",
                self._log_prefix(),
                next_rollout.rollout_id,
                next_rollout.config.timeout_seconds,
            )
            return next_rollout.rollout_id
        finally:
            self._disarm(attempt_id)
            self._cut.discard(attempt_id)

    async def _report_timeout(self, rollout: AttemptedRollout) -> None:
        """Write ``timeout`` once more: the cut may have landed in the runner's own closing write.

        Idempotent: the attempt is ``timeout`` already whenever that write went through.
        """
        try:
            await self.get_store().update_attempt(
                rollout.rollout_id, rollout.attempt.attempt_id, status="timeout"
            )
        except Exception:
            logger.exception(
                "%s could not report rollout %s as timed out", self._log_prefix(), rollout.rollout_id
            )
