"""The one step trainer on its own: streamed minibatches, the busy clock, what a step reports."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import tinker
from tinker_cookbook.rl.train import StreamMinibatchConfig

from agl_tinker.loop import step_trainer
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.datums import GroupDatums
from agl_tinker.loop.step_trainer import BusyClock, Learner, StepTrainer

WORK_S = 0.2


def _datum() -> tinker.Datum:
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=[2, 3], dtype="int64", shape=[2]),
            "mask": tinker.TensorData(data=[1.0, 1.0], dtype="float32", shape=[2]),
        },
    )


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    async def result_async(self) -> Any:
        return self.value


class _SubmitDoesTheWork:
    """A training client whose submitting call runs the work (as a busy service's may)."""

    def __init__(self) -> None:
        self.fb_inputs: list[list[tinker.Datum]] = []
        self.optim_steps = 0

    async def forward_backward_async(self, data: list[tinker.Datum], **_: Any) -> _Done:
        await asyncio.sleep(WORK_S)  # ok: the service's forward/backward time, spent at submission
        self.fb_inputs.append(data)
        return _Done(type("FB", (), {"loss_fn_outputs": []})())

    async def optim_step_async(self, adam: tinker.AdamParams) -> _Done:
        self.optim_steps += 1
        return _Done(type("Optim", (), {"metrics": {"loss": 1.0}})())


async def _fake_group_datums(
    groups: Any, config: Any, *, kl_reference: Any, session_start: int
) -> GroupDatums:
    n = len(groups)
    return GroupDatums(
        valid=[object()] * n,
        trained=list(range(n)),
        dropped=0,
        constant_removed=0,
        data=[_datum() for _ in range(n)],
    )


async def test_streamed_forward_backward_counts_as_busy_from_its_submission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``time/trainer_busy_s`` in streaming includes the forward/backward a submission ran
    (the clock used to start only after ``forward_backward_async`` had returned)."""
    monkeypatch.setattr(step_trainer, "group_datums", _fake_group_datums)
    client = _SubmitDoesTheWork()
    config = TrainConfig(log_path="unused", batch_size=4, group_size=2, num_substeps=1)
    clock = BusyClock()
    trainer = StepTrainer(
        Learner(None, client, 0.01, 1),
        config,
        clock,
        4,
        StreamMinibatchConfig(groups_per_batch=4, num_minibatches=2),
    )
    t0 = time.perf_counter()
    for key in range(4):
        await trainer.add(key, [])
    await trainer.finish()
    assert len(client.fb_inputs) == 2 and client.optim_steps == 1  # two minibatches, one substep
    assert all("mask" not in d.loss_fn_inputs for batch in client.fb_inputs for d in batch)
    assert clock.busy_s >= 2 * WORK_S * 0.95
    assert clock.busy_s <= time.perf_counter() - t0
    metrics = trainer.metrics()
    assert trainer.trained == {0, 1, 2, 3} and metrics["train/datums"] == 4
    assert metrics["groups/trained"] == 4 and metrics["optim/loss"] == 1.0 and metrics["optim/steps"] == 1


async def test_a_policy_reports_under_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_trainer, "group_datums", _fake_group_datums)
    config = TrainConfig(log_path="unused", batch_size=2, group_size=2)
    trainer = StepTrainer(Learner("checker", _SubmitDoesTheWork(), 0.05, 1), config, BusyClock(), 2, None)
    assert set(trainer.metrics()) >= {"policy/checker/train/datums", "policy/checker/optim/lr"}
    assert all(k.startswith("policy/checker/") for k in trainer.metrics())


def test_busy_clock_unions_overlapping_work() -> None:
    clock = BusyClock()
    clock.begin()
    clock.begin()
    time.sleep(0.02)  # ok: measured interval
    clock.end()
    clock.end()
    assert 0.015 < clock.busy_s < 1.0


class _RecordsCalls(_SubmitDoesTheWork):
    """Records the keywords of every ``forward_backward_async``."""

    def __init__(self) -> None:
        super().__init__()
        self.fb_kwargs: list[dict[str, Any]] = []

    async def forward_backward_async(self, data: list[tinker.Datum], **kwargs: Any) -> _Done:
        self.fb_kwargs.append(kwargs)
        return await super().forward_backward_async(data)


@pytest.mark.parametrize(
    ("loss_fn", "loss_fn_config", "streamed"),
    [
        (
            "cispo",
            {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5},
            False,
        ),  # the cookbook's train_step
        ("dro", {"beta": 0.1}, True),  # streamed minibatches
        ("stable_reinforce", {"kl_coeff": 0.01}, False),  # the provenance path
    ],
)
async def test_the_loss_and_its_config_reach_every_forward_backward(
    monkeypatch: pytest.MonkeyPatch, loss_fn: str, loss_fn_config: dict[str, float], streamed: bool
) -> None:
    monkeypatch.setattr(step_trainer, "group_datums", _fake_group_datums)
    client = _RecordsCalls()
    config = TrainConfig(
        log_path="unused",
        batch_size=4,
        group_size=2,
        loss_fn=loss_fn,  # type: ignore[arg-type]
        loss_fn_config=loss_fn_config,
    )
    stream = StreamMinibatchConfig(groups_per_batch=4, num_minibatches=2) if streamed else None
    trainer = StepTrainer(Learner(None, client, 0.01, 1), config, BusyClock(), 4, stream)
    for key in range(4):
        await trainer.add(key, [])
    await trainer.finish()
    assert client.fb_kwargs and client.optim_steps >= 1
    assert all(kw == {"loss_fn": loss_fn, "loss_fn_config": loss_fn_config} for kw in client.fb_kwargs)


async def _datums_of_nonempty_groups(
    groups: Any, config: Any, *, kl_reference: Any, session_start: int
) -> GroupDatums:
    """One datum per group that has rollouts; an empty group is dropped (trains nothing)."""
    kept = [i for i, g in enumerate(groups) if g]
    return GroupDatums(
        valid=[object()] * len(kept),
        trained=kept,
        dropped=len(groups) - len(kept),
        constant_removed=0,
        data=[_datum() for _ in kept],
    )


async def test_optim_steps_counts_the_steps_taken_with_fewer_datums_than_substeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cookbook's ``train_step`` splits the data into ``min(num_substeps, datums)`` batches:
    two datums and four substeps are two optimiser steps (the row used to say four)."""
    monkeypatch.setattr(step_trainer, "group_datums", _datums_of_nonempty_groups)
    client = _SubmitDoesTheWork()
    config = TrainConfig(log_path="unused", batch_size=4, group_size=2, num_substeps=4)
    trainer = StepTrainer(Learner(None, client, 0.01, 4), config, BusyClock(), 4, None)
    for key in range(4):
        await trainer.add(key, [object()] if key < 2 else [])  # type: ignore[list-item]
    await trainer.finish()
    assert client.optim_steps == 2
    assert trainer.metrics()["optim/steps"] == 2


async def test_optim_steps_in_streaming_skips_a_substep_that_trained_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(step_trainer, "group_datums", _datums_of_nonempty_groups)
    client = _SubmitDoesTheWork()
    config = TrainConfig(log_path="unused", batch_size=4, group_size=2, num_substeps=2)
    stream = StreamMinibatchConfig(groups_per_batch=4, num_minibatches=1)
    trainer = StepTrainer(Learner(None, client, 0.01, 2), config, BusyClock(), 4, stream)
    for key in range(4):
        await trainer.add(key, [object()] if key < 2 else [])  # type: ignore[list-item]
    await trainer.finish()
    assert client.optim_steps == 1  # the second substep's groups were all dropped
    assert trainer.metrics()["optim/steps"] == 1
