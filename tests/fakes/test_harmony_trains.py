"""Hello trains offline on gpt-oss (harmony): the reward rises by the lineup's target (0.3, mean of the
first two steps to the last two) and every trajectory stays one token sequence (no drift), analysis
messages and ``<|return|>`` included. Slow: six training steps (~1 min on the shared machine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from async_run import hello_config, run_hello

pytestmark = pytest.mark.slow
STEPS = 6


def test_hello_reward_rises_on_gpt_oss(tmp_path: Path) -> None:
    config = hello_config(tmp_path, "sync", STEPS, model_name="openai/gpt-oss-20b")
    result = asyncio.run(run_hello(config))
    rewards = [row["reward/mean"] for row in result.steps]
    assert len(rewards) == STEPS
    rise = sum(rewards[-2:]) / 2 - sum(rewards[:2]) / 2
    assert rise >= 0.3, rewards
    assert all(row["align/drift_events"] == 0 for row in result.steps), result.steps
