"""TinkerAlgorithm hands its arguments to the training loop (the loop itself: test_loop.py); the
one-command strategy starts runners only once its store answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from agentlightning.store.memory import InMemoryLightningStore

from agl_tinker.algorithm import tinker_algorithm as algo
from agl_tinker.loop.config import TrainConfig
from agl_tinker.run.claim import claim_run, release_run
from agl_tinker.run.lock import holds
from agl_tinker.runners.store_wait import wait_for_store
from agl_tinker.store_server import LeanStoreServer


def test_on_step_reaches_the_training_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    seen: dict[str, Any] = {}

    async def fake_train(config: TrainConfig, store: Any, train_tasks: Any, val_tasks: Any, **kw: Any) -> Any:
        seen.update(kw, store=store, train_tasks=train_tasks, val_tasks=val_tasks)
        kw["on_step"](0, {"reward/mean": 1.0})
        return "result"

    monkeypatch.setattr(algo, "train", fake_train)
    steps: list[tuple[int, Mapping[str, Any]]] = []
    store = InMemoryLightningStore()
    algorithm = algo.TinkerAlgorithm(
        TrainConfig(log_path=str(tmp_path)),
        required_fields=("identity",),
        on_step=lambda step, metrics: steps.append((step, metrics)),
    )
    algorithm.set_store(store)
    asyncio.run(algorithm.run([{"identity": "a"}], [{"identity": "b"}]))
    assert steps == [(0, {"reward/mean": 1.0})]
    assert seen["store"] is store and seen["required_fields"] == ("identity",)
    assert seen["train_tasks"] == [{"identity": "a"}] and seen["val_tasks"] == [{"identity": "b"}]
    assert algorithm.result == "result"


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_runners_wait_for_the_store_that_starts_after_them() -> None:
    port = _unused_port()
    server = LeanStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=port)

    async def start_later() -> None:
        await asyncio.sleep(0.5)
        await server.start()

    starter = asyncio.create_task(start_later())
    try:
        assert await wait_for_store(f"http://127.0.0.1:{port}", timeout_s=30)
        assert server.endpoint == f"http://127.0.0.1:{port}"
    finally:
        await starter
        await server.stop()


async def test_waiting_for_a_store_gives_up_at_the_timeout_or_when_told_to_stop() -> None:
    endpoint = f"http://127.0.0.1:{_unused_port()}"  # nothing listens there
    assert not await wait_for_store(endpoint, timeout_s=0.3)
    stop = threading.Event()
    stop.set()
    t = time.monotonic()
    assert not await wait_for_store(endpoint, stop, timeout_s=30)
    assert time.monotonic() - t < 1.0


def _train_holding_the_lock(log_path: Any, fails: bool) -> Any:
    async def fake_train(config: TrainConfig, *args: Any, **kw: Any) -> Any:
        assert holds(log_path)
        if fails:
            raise RuntimeError("the run failed")
        return "result"

    return fake_train


@pytest.mark.parametrize("fails", [False, True])
def test_the_algorithm_gives_up_its_claim_on_the_log_path_when_its_run_ends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, fails: bool
) -> None:
    """Its claim (made when it was built) is held through the run and given up after it, failed
    or not: another process may train there then. ``train``'s own claim is nested in it."""
    monkeypatch.setattr(algo, "train", _train_holding_the_lock(tmp_path, fails))
    algorithm = algo.TinkerAlgorithm(TrainConfig(log_path=str(tmp_path)))
    algorithm.set_store(InMemoryLightningStore())
    assert holds(tmp_path)
    with contextlib.suppress(RuntimeError):
        asyncio.run(algorithm.run([{"identity": "a"}]))
    assert not holds(tmp_path)


def test_a_second_run_of_the_algorithm_gives_up_no_claim_it_does_not_hold(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    config = TrainConfig(log_path=str(tmp_path))
    monkeypatch.setattr(algo, "train", _train_holding_the_lock(tmp_path, False))
    claim_run(config)  # the CLI's claim, outside the algorithm's
    try:
        algorithm = algo.TinkerAlgorithm(config)
        algorithm.set_store(InMemoryLightningStore())
        for _ in range(2):
            asyncio.run(algorithm.run([{"identity": "a"}]))
            assert holds(tmp_path)
    finally:
        release_run(config)
    assert not holds(tmp_path)


def test_a_dataset_path_reaches_the_loop_as_a_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    seen: dict[str, Any] = {}

    async def fake_train(config: TrainConfig, store: Any, train_tasks: Any, val_tasks: Any, **kw: Any) -> Any:
        seen.update(train_tasks=train_tasks, val_tasks=val_tasks)
        return "result"

    monkeypatch.setattr(algo, "train", fake_train)
    algorithm = algo.TinkerAlgorithm(TrainConfig(log_path=str(tmp_path / "run")))
    algorithm.set_store(InMemoryLightningStore())
    path = tmp_path / "tasks.csv"
    asyncio.run(algorithm.run(path, (t for t in [{"identity": "b"}])))
    assert seen["train_tasks"] is path  # list(path) would fail, list(str) would be characters
    assert seen["val_tasks"] == [{"identity": "b"}]


def test_the_old_import_path_gives_the_moved_names_with_a_warning() -> None:
    import agl_tinker.algorithm
    from agl_tinker.loop import algo as old

    with pytest.warns(DeprecationWarning, match="import it from agl_tinker.algorithm"):
        assert old.fit is agl_tinker.algorithm.fit
    with pytest.warns(DeprecationWarning):
        assert old.fast_runner is agl_tinker.algorithm.fast_runner
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = old.nothing
