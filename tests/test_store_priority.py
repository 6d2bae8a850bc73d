"""The store serves a running rollout's requests before idle runners' polls when requests wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agl_tinker.store_priority import DEQUEUE_PATH, RunningRolloutsFirst

SPAN = "/v1/agl/spans"
FINISH = "/v1/agl/rollouts/ro-1/attempts/at-1"


class _App:
    """An ASGI app whose requests each hold their slot until ``done(path)``; records entry order."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.inside = 0
        self.most_inside = 0
        self._gates: dict[str, asyncio.Event] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        self.entered.append(path)
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self._gates.setdefault(path, asyncio.Event()).wait()
        finally:
            self.inside -= 1

    def done(self, path: str) -> None:
        self._gates.setdefault(path, asyncio.Event()).set()


async def _request(gate: RunningRolloutsFirst, path: str) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    await gate({"type": "http", "path": path}, receive, send)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiting_work_of_running_rollouts_is_admitted_before_waiting_polls() -> None:
    app = _App()
    gate = RunningRolloutsFirst(app, slots=1)
    paths = [SPAN, DEQUEUE_PATH, SPAN + "/x", DEQUEUE_PATH, FINISH]
    tasks = []
    for path in paths:
        tasks.append(asyncio.create_task(_request(gate, path)))
        await _settle()
    assert app.entered == [SPAN] and gate.waiting == 4

    for path in (SPAN, SPAN + "/x", FINISH, DEQUEUE_PATH):
        app.done(path)
        await _settle()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)

    assert app.entered == [SPAN, SPAN + "/x", FINISH, DEQUEUE_PATH, DEQUEUE_PATH]
    assert gate.admitted == {"work": 3, "poll": 2} and gate.waiting == 0


async def test_a_poll_is_admitted_at_once_while_a_slot_is_free() -> None:
    app = _App()
    gate = RunningRolloutsFirst(app, slots=2)
    held = asyncio.create_task(_request(gate, SPAN))
    await _settle()
    poll = asyncio.create_task(_request(gate, DEQUEUE_PATH))
    await _settle()
    assert app.entered == [SPAN, DEQUEUE_PATH] and gate.waiting == 0
    app.done(SPAN)
    app.done(DEQUEUE_PATH)
    await asyncio.wait_for(asyncio.gather(held, poll), timeout=5)


async def test_long_polls_and_other_paths_are_never_held() -> None:
    app = _App()
    gate = RunningRolloutsFirst(app, slots=1)
    held = asyncio.create_task(_request(gate, SPAN))
    await _settle()
    free = ["/v1/agl/waits/rollouts", "/v1/agl/agl-tinker/waits/any", "/v1/traces", "/"]
    others = [asyncio.create_task(_request(gate, path)) for path in free]
    await _settle()
    assert app.entered == [SPAN, *free] and gate.waiting == 0
    for path in [SPAN, *free]:
        app.done(path)
    await asyncio.wait_for(asyncio.gather(held, *others), timeout=5)


async def test_a_cancelled_waiter_leaves_the_line_and_the_slot_still_passes_on() -> None:
    app = _App()
    gate = RunningRolloutsFirst(app, slots=1)
    held = asyncio.create_task(_request(gate, SPAN))
    await _settle()
    gone = asyncio.create_task(_request(gate, FINISH))
    poll = asyncio.create_task(_request(gate, DEQUEUE_PATH))
    await _settle()
    gone.cancel()
    await _settle()
    assert gate.waiting == 1
    app.done(SPAN)
    app.done(DEQUEUE_PATH)
    await asyncio.wait_for(asyncio.gather(held, poll), timeout=5)
    assert app.entered == [SPAN, DEQUEUE_PATH]
    # every slot came back: a new request goes straight in
    app.done(FINISH)
    await asyncio.wait_for(_request(gate, FINISH), timeout=5)


async def test_a_failing_request_gives_its_slot_back() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    gate = RunningRolloutsFirst(failing, slots=1)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wait_for(_request(gate, SPAN), timeout=5)


def test_no_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="slots must be >= 1"):
        RunningRolloutsFirst(_App(), slots=0)


@settings(max_examples=60, deadline=None)
@given(
    polls=st.lists(st.booleans(), min_size=1, max_size=25),
    slots=st.integers(min_value=1, max_value=4),
    release=st.randoms(use_true_random=False),
)
def test_requests_waiting_together_enter_work_first_then_polls_each_in_arrival_order(
    polls: list[bool], slots: int, release: Any
) -> None:
    """Whatever order the admitted requests finish in: never more than ``slots`` inside, everyone
    served, and those that had to wait enter work first, then polls, each kind first come first."""

    async def check() -> None:
        app = _App()
        gate = RunningRolloutsFirst(app, slots=slots)
        paths = [DEQUEUE_PATH if poll else f"{SPAN}/{i}" for i, poll in enumerate(polls)]
        tasks = [asyncio.create_task(_request(gate, path)) for path in paths]
        await _settle()
        while not all(task.done() for task in tasks):
            assert app.inside <= slots
            app.done(release.choice(sorted(set(app.entered))))
            await _settle()
        first, waited = paths[:slots], paths[slots:]
        expected = first + [p for p in waited if p != DEQUEUE_PATH] + [p for p in waited if p == DEQUEUE_PATH]
        assert app.entered == expected and app.most_inside <= slots and gate.waiting == 0

    asyncio.run(asyncio.wait_for(check(), timeout=20))
