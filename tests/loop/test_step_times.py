"""A step's time figures measure what they name, whatever else the loop does between steps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from async_run import hello_config, run_hello

from agl_tinker.loop.training_run import TrainingRun

DELAY_S = 0.5
"""Added to each evaluation and each checkpoint: far longer than a Hello step trains and swaps."""


async def test_sampling_time_leaves_out_the_evaluation_and_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``time/sampling_s`` times the step's sampling only, as the cookbook's ``time/sampling`` span
    does: it used to run from the previous step's end, so it also held the checkpoint saved after
    that step and this step's evaluation. ``time/step_s`` still holds both."""
    evaluate, checkpoint = TrainingRun.evaluate, TrainingRun.checkpoint

    async def slow_evaluate(self: TrainingRun, step: int) -> dict[str, Any]:
        await asyncio.sleep(DELAY_S)  # ok: stands for a long evaluation
        return await evaluate(self, step)

    async def slow_checkpoint(self: TrainingRun, *args: Any, **kwargs: Any) -> dict[str, str]:
        await asyncio.sleep(DELAY_S)  # ok: stands for a long checkpoint save
        return await checkpoint(self, *args, **kwargs)

    monkeypatch.setattr(TrainingRun, "evaluate", slow_evaluate)
    monkeypatch.setattr(TrainingRun, "checkpoint", slow_checkpoint)
    config = hello_config(tmp_path, "sync", 2, eval_every=1, save_every=1, val_fraction=0.01)
    await run_hello(config)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = {row["step"]: row for row in rows if "time/sampling_s" in row}
    assert sorted(steps) == [0, 1]
    for step, row in steps.items():
        before = DELAY_S if step == 0 else 2 * DELAY_S  # this step's evaluation, the last checkpoint
        assert row["time/step_s"] >= row["time/sampling_s"] + before, (step, row)
