"""Server-side futures: what ``/api/v1/retrieve_future`` long-polls for.

Every future-creating call registers one ``Promise`` under a fresh request id. Its result is
set on the server's event loop when the simulator's work finishes (plus an injected slow-future
delay, if drawn); pollers wait on it without sleeping, so a long poll answers the moment the
result exists. Results stay retrievable after a poll (a poll whose answer was lost is simply
repeated) until the session that owns it ends, or the table exceeds its bound, oldest finished
first.

Nothing here may form a reference cycle with the simulator's result: a create-model future's
result is the whole training run (parameters, optimizer state), and a cycle would keep it past
its session's end until Python's rare full collection (what made the soak grow).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

MAX_KEPT = 20_000


class Promise:
    """One request's eventual result: a value, or the exception the simulator raised."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request_id: str, owner: str | None = None) -> None:
        self.request_id = request_id
        self.owner = owner  # the session the request belongs to (its promises go with it)
        self.sequence_ids: list[str] = []  # sampling only: one id per requested sample
        self._done: asyncio.Future[Any] = loop.create_future()

    @property
    def done(self) -> bool:
        return self._done.done()

    def on_settled(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop once the promise settles (at once if it has)."""
        self._done.add_done_callback(lambda _: callback())

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        if self._done.done():
            return
        if error is not None:
            self._done.set_exception(error)
            self._done.exception()  # retrieved: no "never retrieved" warning if nobody polls
        else:
            self._done.set_result(value)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once settled (the wait itself never cancels it)."""
        if not self._done.done():
            await asyncio.wait({self._done}, timeout=timeout)
        return self._done.done()

    def outcome(self) -> tuple[Any, BaseException | None]:
        """``(value, None)`` or ``(None, error)``; only once ``done``."""
        error = self._done.exception()
        return (None, error) if error is not None else (self._done.result(), None)


class PromiseTable:
    """Request id → ``Promise``, fed from simulator threads, read on the server loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._promises: collections.OrderedDict[str, Promise] = collections.OrderedDict()

    def get(self, request_id: str) -> Promise | None:
        return self._promises.get(request_id)

    def __len__(self) -> int:
        return len(self._promises)

    def new(self, owner: str | None = None) -> Promise:
        promise = Promise(self._loop, f"req-{uuid.uuid4().hex}", owner)
        self._promises[promise.request_id] = promise
        self._evict()
        return promise

    def failed(self, error: BaseException) -> Promise:
        promise = self.new()
        promise.settle(error=error)
        return promise

    def track(
        self,
        work: Future[Any],
        transform: Callable[[Any], Any] = lambda value: value,
        delay_s: float = 0.0,
        owner: str | None = None,
    ) -> Promise:
        """A promise settled with ``transform(result)`` (run on the loop) when ``work`` finishes.

        The callbacks reach ``work`` only through their argument, never a closure: ``work`` keeps
        its done-callbacks, so a closure over it would be a cycle through its result."""
        promise = self.new(owner)

        def settle(done: Future[Any]) -> None:
            error = done.exception()
            if error is not None:
                promise.settle(error=error)
                return
            try:
                promise.settle(transform(done.result()))
            except Exception as exc:  # a failing transform fails the request, not the server
                promise.settle(error=exc)

        def on_done(done: Future[Any]) -> None:
            if delay_s > 0:
                self._loop.call_soon_threadsafe(self._loop.call_later, delay_s, settle, done)
            else:
                self._loop.call_soon_threadsafe(settle, done)

        work.add_done_callback(on_done)
        return promise

    def drop(self, request_ids: list[str]) -> None:
        """Forget these requests' results (their client fetched them and said so)."""
        for request_id in request_ids:
            self._promises.pop(request_id, None)

    def release(self, owner: str) -> int:
        """Forget every promise of the session ``owner`` (it ended: nobody polls them); returns how many."""
        owned = [rid for rid, p in self._promises.items() if p.owner == owner]
        for request_id in owned:
            del self._promises[request_id]
        return len(owned)

    def _evict(self) -> None:
        if len(self._promises) <= MAX_KEPT:
            return
        for request_id in [rid for rid, p in self._promises.items() if p.done][: len(self._promises) // 4]:
            del self._promises[request_id]
