"""Completion sources: how a dispatcher learns that a rollout reached a terminal status.

Every source implements :class:`CompletionSource`: ``watch`` rollout ids, then ``next_finished``
yields each of them once, after the store has it in a terminal status. One class per strategy;
:func:`open_completion_source` picks one from ``DispatchConfig.wait`` and the kind of store:

* :class:`StoreEventsSource` (``events``; an in-process ``InMemoryLightningStore``, bare or inside
  a ``LightningStoreServer`` owned by this process): the store sets an ``aiologic.Event`` per
  rollout when it finishes; the source awaits that event directly. The store's own
  ``wait_for_rollouts`` waits on the same event through ``asyncio.to_thread``: one
  default-executor thread per unfinished rollout, which queues up once more rollouts are in
  flight than the executor has threads, and starves every other ``to_thread`` user. Awaiting the
  event costs no thread.
* :class:`WaitAnySource` (``wait_any``; a ``LightningStoreClient`` whose server is agl-tinker's
  ``LeanStoreServer``): one ``POST /v1/agl/agl-tinker/waits/any`` blocks server-side until any of
  its rollouts finishes and answers with the finished rollouts and their latest attempts
  (:attr:`CompletionSource.finished_rollouts`); rollouts enqueued meanwhile get a request of
  their own. A server without the route makes it long-poll instead (``wait="auto"``) or fail.
* :class:`LongPollSource` (``long_poll``; a stock ``agl store`` server, and any other store):
  Agent-lightning's client refuses waits over 0.1 s, and a multi-id wait returns only when *all*
  ids finish. So ``long_poll_slots`` single-id ``wait_for_rollouts`` requests stay open, rotated
  over the rollouts in flight, and whenever one returns a non-blocking
  ``wait_for_rollouts(<the others>, timeout=0)`` sweeps the rest.

``RolloutConfig`` timeouts are applied by the store's watchdog, which runs only inside store
calls. Long-poll and wait-for-any requests are such calls; the events source ticks a
``wait_for_rollouts(timeout=0)`` every ``watchdog_s`` when a timeout is configured (the tick is
not how completions are detected). Measured figures: ``benchmarks/dispatch.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agentlightning.store.base import LightningStore
from agentlightning.store.client_server import LightningStoreClient
from agentlightning.types import Rollout

from agl_tinker.dispatch.event_source import StoreEventsSource
from agl_tinker.dispatch.poll_sources import LongPollSource, WaitAnySource
from agl_tinker.dispatch.store_calls import StoreCaller
from agl_tinker.dispatch.types import DispatchConfig, DispatchError
from agl_tinker.store_release import completion_events

__all__ = ["CompletionSource", "open_completion_source"]


class CompletionSource(Protocol):
    """Turns "rollout X reached a terminal status" into a stream of rollout ids, once per id.

    Contract for every implementation:

    * ``watch(ids)`` starts watching; it never blocks and may be called any number of times.
    * ``next_finished()`` blocks until at least one watched rollout has finished and returns all
      that have so far, each id exactly once over the source's life; an error of the background
      work (``StoreCallError``, ``RolloutsLost``, ``DispatchError``) is raised from here.
    * ``noticed[rid]`` is the ``time.time()`` the source saw ``rid`` finished.
    * ``finished_rollouts`` holds finished rollouts that came with their completion (latest
      attempt included), for the reader to ``pop`` instead of querying the store again.
    * ``aclose()`` cancels the background work; the source is not used afterwards.
    """

    noticed: dict[str, float]
    finished_rollouts: dict[str, Rollout]

    @property
    def strategy(self) -> str:
        """How completions are learned now: ``events``, ``wait_any`` or ``long_poll``."""
        ...

    def watch(self, rollout_ids: Sequence[str]) -> None: ...

    async def next_finished(self) -> list[str]: ...

    async def aclose(self) -> None: ...


def open_completion_source(
    store: LightningStore, config: DispatchConfig, call: StoreCaller
) -> CompletionSource:
    """The completion source ``config.wait`` asks for on ``store``.

    ``"auto"`` picks events for an in-process in-memory store, wait-for-any (falling back to
    long-polling on a server without the route) for a ``LightningStoreClient``, else long-polling.

    Args:
        store: the store rollouts are enqueued in.
        config: ``wait``, ``long_poll_s``, ``long_poll_slots``, ``watchdog_s`` and
            ``rollout_config`` (whether the events source must tick the store's watchdog).
        call: how the source makes store calls (retries).

    Returns:
        A source not watching anything yet.

    Raises:
        DispatchError: ``wait`` names a strategy ``store`` cannot serve.
    """
    events = completion_events(store) if config.wait in ("auto", "events") else None
    if config.wait == "events" and events is None:
        raise DispatchError(
            f"wait='events' needs an in-process InMemoryLightningStore, got {type(store).__name__}"
        )
    if events is not None:
        return StoreEventsSource(store, config, call, events=events)
    if isinstance(store, LightningStoreClient) and config.wait in ("auto", "wait_any"):
        return WaitAnySource(store, config, call, fallback=config.wait == "auto")
    if config.wait == "wait_any":
        raise DispatchError(f"wait='wait_any' needs a LightningStoreClient, got {type(store).__name__}")
    return LongPollSource(store, config, call)
