"""TinkerAlgorithm hands its arguments to the training loop (the loop itself: test_loop.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from agentlightning.store.memory import InMemoryLightningStore

from agl_tinker import algo
from agl_tinker.config import TrainConfig


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
