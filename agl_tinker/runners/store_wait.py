"""Waiting for a store server to answer, and checking it is the run's own: what a runner does first.

Light on purpose (aiohttp and Agent-lightning's API prefix): runner processes and Ray actors import
it without the training loop.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from agentlightning.execution.events import ExecutionEvent
from agentlightning.store.client_server import API_V1_AGL_PREFIX

from agl_tinker.store_routes import RUN_PATH

__all__ = ["StoreOfAnotherRun", "wait_for_store"]

_STORE_PROBE_S = 0.1
_STORE_START_TIMEOUT_S = 120.0


class StoreOfAnotherRun(RuntimeError):
    """A runner reached a store server that is not the one of the run that started it."""


async def wait_for_store(
    endpoint: str,
    stop_evt: ExecutionEvent | None = None,
    timeout_s: float = _STORE_START_TIMEOUT_S,
    *,
    run_id: str | None = None,
) -> bool:
    """Wait until the store server at ``endpoint`` answers its health check; ``False`` if it never did.

    Gives up silently after ``timeout_s`` or once ``stop_evt`` is set: whoever talks to the store
    next reports a store that is really down. With ``run_id``, the server must also announce that
    run (:data:`~agl_tinker.store_routes.RUN_PATH`); one that answers with another (or is not a
    :class:`LeanStoreServer`, or no agl-tinker store at all) raises :class:`StoreOfAnotherRun` at once.
    """
    base = endpoint.rstrip("/") + API_V1_AGL_PREFIX
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
        while time.monotonic() < deadline and not (stop_evt is not None and stop_evt.is_set()):
            try:
                async with http.get(base + "/health") as response:
                    if response.status == 200:
                        if run_id is not None:
                            await _check_run(http, base, endpoint, run_id)
                        return True
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(_STORE_PROBE_S)  # ok: start-up readiness probe, not completion polling
    return False


async def _check_run(http: aiohttp.ClientSession, base: str, endpoint: str, run_id: str) -> None:
    """Raise :class:`StoreOfAnotherRun` unless the server announces ``run_id``.

    A 200 answer that is not a JSON object is a server of another kind (its page fallback, say):
    said at once, since asking again would get the same answer.
    """
    async with http.get(base + RUN_PATH) as response:
        status, text = response.status, await response.text(errors="replace")
    found = None
    if status == 200:
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise StoreOfAnotherRun(
                f"the server at {endpoint} answers but is not an agl-tinker store server ({RUN_PATH} "
                f"gave {text[:60]!r}); check the store address, not taking its rollouts"
            )
        found = answer.get("run_id")
    if found != run_id:
        raise StoreOfAnotherRun(
            f"the store server at {endpoint} belongs to another run (run id {found!r}, this runner's "
            f"{run_id!r}): its port was taken before this run's server bound it; not taking its rollouts"
        )
