"""Duet: two agents, two LoRAs, one run on the simulator: each policy trains its own datums with its
own optimiser steps, checkpoints and metrics, and a restarted run resumes every policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agl_tinker.examples.duet.agent import CHECKER, SPEAKER, checker_prompt, rewards, verdict
from agl_tinker.examples.duet.train import config_from_argv, duet_config, run

pytestmark = pytest.mark.slow
POLICIES = (SPEAKER, CHECKER)


def test_rewards_and_verdicts() -> None:
    assert verdict(" Yes.") is True and verdict("No.") is False and verdict("Hello!") is None
    assert rewards(1.0, True) == {"team": 1.0, SPEAKER: 1.0, CHECKER: 1.0}
    assert rewards(-1.0, True) == {"team": 0.0, SPEAKER: -1.0, CHECKER: -1.0}
    assert rewards(0.0, None) == {"team": 0.0, SPEAKER: 0.0, CHECKER: 0.0}
    assert "7" in checker_prompt("7", "I am 7.")


def test_command_line_overrides_one_policy(tmp_path: Path) -> None:
    config = config_from_argv(["max_steps=3", "policies.checker.lora_rank=4"], str(tmp_path))
    assert config.max_steps == 3 and config.policies[CHECKER].lora_rank == 4
    assert config.policies[CHECKER].reward_key == CHECKER and config.policies[SPEAKER].reward_key == SPEAKER


def _index(log_path: Path, name: str) -> list[dict[str, object]]:
    path = log_path / "policies" / name / "checkpoints.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_each_policy_trains_with_a_kl_penalty_against_its_own_base_model(tmp_path: Path) -> None:
    result = run(
        duet_config(str(tmp_path / "duet"), max_steps=1, batch_size=4, kl_penalty_coef=0.05), n_runners=1
    )
    for name in POLICIES:
        step = result.steps[0]
        assert step[f"policy/{name}/train/datums"] > 0, step
        assert f"policy/{name}/kl_policy_base" in step, sorted(step)


def test_each_policy_trains_checkpoints_and_resumes_on_its_own(tmp_path: Path) -> None:
    log_path = tmp_path / "duet"
    config = duet_config(str(log_path), max_steps=2, batch_size=4, save_every=1)
    result = run(config, n_runners=1)
    assert [s["step"] for s in result.steps] == [0, 1]
    for step in result.steps:
        assert step["rollouts/succeeded_frac"] == 1.0, step
        assert step["calls/unowned"] == 0
        for name in POLICIES:
            assert step[f"policy/{name}/train/datums"] > 0, (name, step)
            assert step[f"policy/{name}/optim/steps"] == 1
            assert step[f"policy/{name}/calls/total"] == 16  # one call per episode, 4 x 4 episodes
            assert step[f"policy/{name}/reward/mean"] is not None
            assert (
                log_path / "transcripts" / f"step_{step['step']:06d}.{name}.jsonl"
            ).exists()  # one file each
        assert step["train/datums"] == sum(step[f"policy/{n}/train/datums"] for n in POLICIES)
    assert result.steps[0][f"policy/{CHECKER}/optim/lr"] == 5e-2
    assert result.steps[0][f"policy/{SPEAKER}/optim/lr"] == 3e-2
    finals = {name: result.policy_checkpoints[name]["state_path"] for name in POLICIES}
    assert len(set(finals.values())) == 2  # two training clients, two sets of weights
    for name in POLICIES:
        index = _index(log_path, name)
        assert [r["name"] for r in index] == ["000001", "final"]
        assert {r["policy"] for r in index} == {name}
        assert index[-1]["state_path"] == finals[name]
        assert result.policy_curves[name].exists()
    # A longer run on the same log_path resumes each policy from its own final checkpoint.
    resumed = run(duet_config(str(log_path), max_steps=3, batch_size=4), n_runners=1)
    assert resumed.start_step == 2 and [s["step"] for s in resumed.steps] == [2]
    for name in POLICIES:
        assert resumed.steps[0][f"policy/{name}/train/datums"] > 0
        assert [r["name"] for r in _index(log_path, name)][-1] == "final"
        assert resumed.policy_checkpoints[name]["state_path"] != finals[name]
