"""A run that trains on nothing says so at every step and stops with an error (exit code 1)."""

from __future__ import annotations

import logging
from pathlib import Path

import agentlightning as agl
import pytest
from reliability_harness import always_raises, hello_config, run_hello

from agl_tinker import cli
from agl_tinker.algorithm import fit
from agl_tinker.examples.hello.agent import hello_dataset
from agl_tinker.loop.config import ConfigError
from agl_tinker.loop.errors import NoTrainableRollouts


async def test_an_agent_that_always_raises_stops_the_run_after_max_empty_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = hello_config(tmp_path / "run", max_steps=6, max_empty_steps=3)
    with (
        caplog.at_level(logging.ERROR, logger="agl_tinker.loop.train"),
        pytest.raises(NoTrainableRollouts, match="3 steps in a row") as caught,
    ):
        await run_hello(config, always_raises, sim_dir=tmp_path / "sim")
    assert "'failed'" in str(caught.value)
    empty = [r.getMessage() for r in caplog.records if "trained on nothing" in r.getMessage()]
    assert len(empty) == 3, empty
    assert all("16 of 16 rollouts excluded as 'failed'" in m for m in empty), empty


async def test_max_empty_steps_zero_never_stops(tmp_path: Path) -> None:
    config = hello_config(tmp_path / "run", max_steps=2, max_empty_steps=0)
    result = await run_hello(config, always_raises, sim_dir=tmp_path / "sim")
    assert [s["train/datums"] for s in result.steps] == [0, 0]


def test_negative_max_empty_steps_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_empty_steps"):
        hello_config(tmp_path, max_empty_steps=-1)


def test_the_cli_exits_1_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from agl_tinker.examples.hello import train as hello_train

    def fail(*args: object, **kwargs: object) -> None:
        raise NoTrainableRollouts("3 steps in a row had no rollout to train on")

    monkeypatch.setattr(hello_train, "run_one_click", fail)
    assert cli.main(["hello", "--ci", "--log-path", str(tmp_path / "run")]) == 1
    assert "3 steps in a row had no rollout to train on" in capsys.readouterr().err


async def _raising_rollout(task: dict[str, str], llm: agl.LLM) -> float:
    raise RuntimeError("agent bug")


@pytest.mark.slow
def test_one_command_fit_with_runner_processes_raises_it_too(tmp_path: Path) -> None:
    """``fit`` (agl.Trainer, a store server, a runner process) used to return normally here."""
    config = hello_config(tmp_path / "run", max_steps=6, batch_size=2, group_size=2)
    with pytest.raises(NoTrainableRollouts, match="excluded as 'failed'"):
        fit(agl.rollout(_raising_rollout), config, hello_dataset("train")[:40], n_runners=1)
