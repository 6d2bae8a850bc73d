"""A run whose stream of groups ends before ``n_steps``: its final checkpoint is the step it reached."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from async_run import BATCH, hello_config, run_hello

from agl_tinker.loop import train as train_module
from agl_tinker.loop.ledger import FINAL_OUTCOMES, effective_ledger
from agl_tinker.loop.step import Sampled, TrainingStep

STEPS, REACHED = 4, 2


class _EndsAt:
    """The run's own schedule, except that its stream has no groups left from step ``end`` on."""

    def __init__(self, inner: Any, end: int) -> None:
        self._inner, self._end = inner, end

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def fill(self, step: TrainingStep) -> Sampled | None:
        return None if step.step >= self._end else await self._inner.fill(step)


async def test_a_run_that_ends_early_checkpoints_the_step_it_reached_and_resumes_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final checkpoint used to say ``n_steps``: a resume then thought every step done and
    trained nothing more. Labelled with the step reached (and carrying the group ledger), a resume
    trains the steps left, each group once."""
    pick = train_module.pick_schedule
    monkeypatch.setattr(train_module, "pick_schedule", lambda *a: _EndsAt(pick(*a), REACHED))
    config = hello_config(tmp_path, "async", STEPS, eval_every=REACHED, val_fraction=0.01)
    first = await run_hello(config)
    assert [s["step"] for s in first.steps] == list(range(REACHED))
    assert first.end_step == REACHED
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/time_s" in r] == [0, REACHED]  # the last weights once
    index = [json.loads(line) for line in (tmp_path / "checkpoints.jsonl").read_text().splitlines()]
    assert [(r["name"], r["batch"]) for r in index] == [("final", REACHED)]
    assert "async_done_below" in index[-1]  # the ledger: which groups the weights hold

    monkeypatch.setattr(train_module, "pick_schedule", pick)
    second = await run_hello(config)
    assert (second.start_step, second.end_step) == (REACHED, STEPS)
    assert [s["step"] for s in second.steps] == list(range(REACHED, STEPS))
    done = [line["key"] for line in effective_ledger(tmp_path) if line["outcome"] in FINAL_OUTCOMES]
    assert sorted(done) == list(range(STEPS * BATCH))
