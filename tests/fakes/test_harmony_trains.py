"""Hello trains offline on gpt-oss (harmony): the greedy validation on the 24 held-out identities
rises by at least 1.0, every step trains all of its rollouts, and every trajectory stays one token
sequence (no drift), analysis messages and ``<|return|>`` included. Slow: six training steps.

"Learns" is read off the validation (greedy: it depends on the weights alone), not off the
training reward. That reward is sampled (temperature 1, unseeded) and swings from step to step at
this learning rate: its rise from the mean of the first two steps to the last two, once held to
0.3, read 0.30-0.70 over 10 runs here (load 1.7-4.9), one run at 0.297. The validation went from
-1 to +1 in all 10 (by step 3 in each) and stays at -1 when training is broken (learning rate 1e-9).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from async_run import BATCH, GROUP, hello_config, run_hello

from agl_tinker.examples.hello.agent import hello_dataset

pytestmark = pytest.mark.slow
STEPS = 6


def test_hello_learns_on_gpt_oss(tmp_path: Path) -> None:
    config = hello_config(tmp_path, "sync", STEPS, model_name="openai/gpt-oss-20b", eval_every=STEPS)
    result = asyncio.run(run_hello(config, val_tasks=hello_dataset("val")))
    assert [row["step"] for row in result.steps] == list(range(STEPS))
    validation = {e["step"]: e["eval/reward/mean"] for e in result.evals}
    assert validation.keys() == {0, STEPS}, validation
    assert validation[STEPS] >= validation[0] + 1.0, (validation, result.rewards)
    # nothing was dropped: every harmony answer was parsed, scored and trained
    assert [row["train/datums"] for row in result.steps] == [BATCH * GROUP] * STEPS, result.steps
    assert all(row["align/drift_events"] == 0 for row in result.steps), result.steps
