"""A tracer that records nothing, for runner tests whose agents return their reward.

The runner emits a returned reward itself, so these tests need no spans from the tracer; Agent-lightning's
``DummyTracer`` still opens a context per rollout, which this one makes a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from agentlightning.tracer.dummy import DummyTracer
from agentlightning.types import Span


class QuietTracer(DummyTracer):
    """Records nothing: ``trace_context`` yields at once and the last trace is always empty."""

    @contextlib.asynccontextmanager
    async def trace_context(self, name: str | None = None, **kwargs: Any) -> AsyncIterator[None]:
        yield

    def get_last_trace(self) -> list[Span]:
        return []
