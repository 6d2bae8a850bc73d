"""What the wire service keeps per training run and sampling session, and how it applies requests:
in ``seq_id`` order per run, each through the simulator's concurrent future."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

from fakes.tinker import SamplingClient, TrainingClient

from .futures import Promise

# How long a request waits for an earlier seq_id of its run that never arrives (a client that
# reserved an id and then failed before sending it) before it is applied anyway.
GAP_WAIT_S = 30.0


@dataclasses.dataclass
class Run:
    client: TrainingClient
    session_id: str
    next_seq: int = 1
    turn: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)


@dataclasses.dataclass
class Sampler:
    client: SamplingClient
    base_model: str
    model_path: str | None
    session_id: str
    clones: int = 0


@dataclasses.dataclass
class SessionClock:
    last_seen: float = dataclasses.field(default_factory=time.monotonic)


def done_future(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def failed(error: BaseException) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(error)
    return future


def call_sim(fn: Callable[[], Any]) -> Future[Any]:
    """The simulator call's concurrent future; an exception raised at call time fails it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the SDK-deprecated load_state* methods
            return fn().future()  # type: ignore[no-any-return]
    except Exception as exc:
        return failed(exc)


def owned_by(key: Hashable, session_id: str, prefix: str) -> bool:
    """Whether a remembered submission's key names the session or one of its runs or samplers."""
    return (
        isinstance(key, tuple)
        and len(key) > 1
        and isinstance(key[1], str)
        and (key[1] == session_id or key[1].startswith(prefix))
    )


async def in_seq_order(run: Run, seq_id: int | None, submit: Callable[[], Promise]) -> Promise:
    """Apply ``submit`` once every earlier ``seq_id`` of ``run`` has been applied."""
    async with run.turn:
        if seq_id is not None and run.next_seq < seq_id:
            # a missing request that never comes: go on after GAP_WAIT_S rather than hang
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.turn.wait_for(lambda: run.next_seq >= seq_id), GAP_WAIT_S)
        promise = submit()
        if seq_id is not None:
            run.next_seq = max(run.next_seq, seq_id + 1)
        run.turn.notify_all()
    return promise
