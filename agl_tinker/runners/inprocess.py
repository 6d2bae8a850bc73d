"""Runners as coroutines of this process: many concurrent rollouts with no runner processes.

For tests, benchmarks and notebooks. :class:`InProcessRunners` does per rollout what an
Agent-lightning runner does with a ``(task, llm) -> reward`` agent: claim the rollout, resolve the
``main_llm`` resource of its resources snapshot to the rollout's own endpoint URL, run the agent,
store its reward as a reward span, and mark the attempt succeeded (or failed if the agent raised).
Up to ``concurrency`` rollouts run at once, as if that many runners served the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import agentlightning as agl
from agentlightning.store.base import LightningStore
from agentlightning.types import AttemptedRollout, ProxyLLM, Span

__all__ = ["AgentFn", "InProcessRunners"]

logger = logging.getLogger(__name__)

AgentFn = Callable[[Mapping[str, Any], agl.LLM], Awaitable[float | None]]
"""An agent: the task and the LLM resource in, the episode reward (or ``None``: no reward) out."""

_IDLE_S = 0.01  # how long the claim loop waits when the queue is empty (one dequeue per tick)


class InProcessRunners:
    """``concurrency`` runner slots over ``store``, running ``agent``; use as ``async with``."""

    def __init__(
        self, store: LightningStore, agent: AgentFn, *, concurrency: int, resource_name: str = "main_llm"
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._store = store
        self._agent = agent
        self._slots = asyncio.Semaphore(concurrency)
        self._resource_name = resource_name
        self._claimer: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.failures = 0

    async def __aenter__(self) -> InProcessRunners:
        self._claimer = asyncio.create_task(self._claim_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._claimer, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim_loop(self) -> None:
        while True:
            await self._slots.acquire()
            attempted = await self._store.dequeue_rollout(worker_id="in-process")
            if attempted is None:
                self._slots.release()
                await asyncio.sleep(_IDLE_S)  # ok: the store has no "wait for work" call
                continue
            task = asyncio.create_task(self._run(attempted))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _llm(self, attempted: AttemptedRollout) -> agl.LLM:
        update = (
            await self._store.get_resources_by_id(attempted.resources_id)
            if attempted.resources_id is not None
            else await self._store.get_latest_resources()
        )
        if update is None or self._resource_name not in update.resources:
            raise RuntimeError(f"rollout {attempted.rollout_id} has no {self._resource_name!r} resource")
        llm = update.resources[self._resource_name]
        if isinstance(llm, ProxyLLM):
            return llm.with_attempted_rollout(attempted)
        assert isinstance(llm, agl.LLM)
        return llm

    async def _run(self, attempted: AttemptedRollout) -> None:
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        try:
            await self._store.update_attempt(rid, aid, status="running")
            reward = await self._agent(attempted.input, await self._llm(attempted))
            if reward is not None:
                core = agl.emit_reward(float(reward), propagate=False)
                seq = await self._store.get_next_span_sequence_id(rid, aid)
                await self._store.add_span(
                    Span.from_core_fields(core, rollout_id=rid, attempt_id=aid, sequence_id=seq)
                )
            await self._store.update_attempt(rid, aid, status="succeeded")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failures += 1
            logger.warning("agent failed on rollout %s: %r", rid, e)
            await self._store.update_attempt(rid, aid, status="failed")
        finally:
            self._slots.release()
