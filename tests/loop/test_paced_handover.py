"""The paced schedule's hand-over: a step takes the groups that finished while the previous step
trained before the groups it releases reach the store, and waits for none of them.

Profiled under the benchmark's cost model (``benchmarks/async_training.py``): releasing first
started 32 rollouts on the event loop the hand-over runs on, and every ``await next_group()`` then
waited behind them (0.3-0.7 s of trainer idle per Hello step). The schedule runs here against a
recording dispatcher, so the order of what it does is the specification.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tinker_cookbook.rl.train import AsyncConfig

from agl_tinker.dispatch.continuous import FinishedGroup, GroupRequest
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.schedules import ContinuousSchedule

BATCH, STEPS = 2, 3


class RecordingDispatcher:
    """The dispatcher calls a paced schedule makes, logged; every submitted group finishes at once."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.read_s = 0.0
        self.running_groups = self.pending_groups = self.waiting_groups = 0
        self._finished: list[FinishedGroup[Any]] = []

    async def submit(self, requests: list[GroupRequest], *, front: bool = False) -> None:
        self.log.append("submit " + ",".join(str(r.key) for r in requests))
        self._finished.extend(FinishedGroup(r, (), 0.0, 0.0) for r in requests)

    def take_finished(self) -> list[FinishedGroup[Any]]:
        out, self._finished = self._finished, []
        return out

    async def next_group(self) -> FinishedGroup[Any]:
        self.log.append("wait")
        return self._finished.pop(0)


class RecordingStep:
    def __init__(self, step: int, log: list[str]) -> None:
        self.step, self.log, self.trained = step, log, set()

    async def add(self, key: int, rollouts: list[Any]) -> None:
        self.log.append(f"take {key}")
        self.trained.add(key)


async def _store_known(step: int) -> None:
    """The run's store check: the store still knows the run."""


def _schedule(tmp_path: Path) -> ContinuousSchedule:
    config = TrainConfig(
        log_path=str(tmp_path),
        max_steps=STEPS,
        batch_size=BATCH,
        group_size=2,
        sampling_steps_ahead=1,
        async_config=AsyncConfig(max_steps_off_policy=1, groups_per_batch=BATCH),
    )
    tasks = [{"i": i} for i in range(BATCH * STEPS)]
    dataset = SimpleNamespace(get_batch=lambda b: tasks[b * BATCH : (b + 1) * BATCH])
    run = SimpleNamespace(
        config=config, n_steps=STEPS, train_ds=dataset, stall_timeout_s=lambda: None, check_store=_store_known
    )
    return ContinuousSchedule(run, None, 0)  # type: ignore[arg-type]


def test_a_step_takes_what_finished_before_its_released_groups_start_and_waits_for_none(
    tmp_path: Path,
) -> None:
    log: list[str] = []
    schedule = _schedule(tmp_path)
    schedule._dispatcher = RecordingDispatcher(log)  # type: ignore[assignment]

    async def steps() -> None:
        for index in range(STEPS):
            log.append(f"step {index}")
            step = RecordingStep(index, log)
            assert await schedule.fill(step) is not None  # type: ignore[arg-type]
            schedule.after_step(step)  # type: ignore[arg-type]

    asyncio.run(steps())
    assert log == [
        "step 0",
        "submit 0,1,2,3",  # nothing finished yet: this step's batch and the next start first
        "take 0",
        "take 1",
        "step 1",
        "take 2",  # finished while step 0 trained: taken before step 2's batch starts
        "take 3",
        "submit 4,5",
        "step 2",
        "take 4",
        "take 5",
    ]
