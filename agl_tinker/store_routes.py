"""The HTTP contract of agl-tinker's store server beyond Agent-lightning's API: its own routes'
paths (relative to ``/v1/agl``, where ``LightningStoreClient`` sends requests) and bodies.

The server (:mod:`agl_tinker.store_server`) answers them; the dispatch's wait-for-any source, the
rollout release and the runners' run check ask them. Nothing here imports more than pydantic and
Agent-lightning's types.
"""

from __future__ import annotations

from agentlightning.types import AttemptedRollout, Rollout
from pydantic import BaseModel, Field

__all__ = [
    "MAX_WAIT_ANY_S",
    "RELEASE_PATH",
    "RUN_PATH",
    "WAIT_ANY_PATH",
    "ReleaseRequest",
    "ReleaseResponse",
    "WaitAnyRequest",
    "WaitAnyResponse",
]

WAIT_ANY_PATH = "/agl-tinker/waits/any"
"""The wait-for-any route, relative to ``/v1/agl`` (where ``LightningStoreClient`` sends requests)."""
RELEASE_PATH = "/agl-tinker/rollouts/release"
"""``POST {"rollout_ids": [...]}``: forget those finished rollouts (:func:`agl_tinker.store_release.release_rollouts`)."""
RUN_PATH = "/agl-tinker/run"
"""``GET`` answers ``{"run_id": ...}``: which run this server belongs to (``null`` for none)."""
MAX_WAIT_ANY_S = 10.0
"""Longest a wait-for-any request may block: bounds how long a handler outlives a gone client."""


class WaitAnyRequest(BaseModel):
    rollout_ids: list[str]
    timeout: float = Field(ge=0, le=MAX_WAIT_ANY_S)


class WaitAnyResponse(BaseModel):
    finished: list[AttemptedRollout | Rollout]
    """The asked-for rollouts in a terminal status (each with its latest attempt, if any)."""
    unknown: list[str]
    """Asked-for ids the store does not know (never enqueued, or released, even while the request
    waited); the answer comes at once when there are any."""


class ReleaseRequest(BaseModel):
    rollout_ids: list[str]


class ReleaseResponse(BaseModel):
    released: list[str]
    """The asked-for rollouts that were finished and are gone now (unknown or unfinished ones stay)."""
