"""Failures summarised, not flooded (issue 34): the first traceback of each distinct agent error is
shown once and later ones counted, the progress line names the top exclusion reason, the final
error is printed once, every traceback stays in ``run.log``; a flat reward is said once."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agl_tinker.loop.progress import ProgressDisplay
from agl_tinker.loop.report import summary_lines
from agl_tinker.run import failures
from agl_tinker.run.flat_reward import FlatRewardWatch

ROOT = Path(__file__).resolve().parents[2]


def _raise(kind: type[Exception]) -> BaseException:
    try:
        raise kind("boom")
    except Exception as e:
        return e


def test_exclusion_text_names_the_top_reason_first() -> None:
    metrics = {"rollouts/total": 32, "excluded/failed": 12, "excluded/no_reward": 4, "excluded/timeout": 0}
    assert failures.exclusion_text(metrics) == "excluded 16/32: failed 12, no_reward 4"
    assert failures.exclusion_text({"rollouts/total": 32}) is None


def test_the_progress_line_says_how_many_were_excluded_and_why() -> None:
    out = io.StringIO()
    ProgressDisplay(stream=out).step_done(
        0, 3, {"reward/mean": 0.5, "rollouts/total": 32, "excluded/failed": 16}
    )
    assert "excluded 16/32: failed 16" in out.getvalue()


@pytest.fixture
def agent_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with the summary filter, in a process that is not verbose: the root logger at
    WARNING, whatever level an earlier test in this process left it at (at INFO, as after a ``-v``
    command, every traceback is shown by design)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    logger = logging.getLogger("test.agent_errors")
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    logger.addHandler(handler)
    logger.propagate = False
    summary = failures.AgentErrorSummary()
    logger.addFilter(summary)
    yield logger, console
    logger.removeFilter(summary)
    logger.removeHandler(handler)
    root.setLevel(level)


def test_each_distinct_agent_error_is_shown_once_and_the_rest_go_to_the_run_log(
    agent_logger: tuple[logging.Logger, io.StringIO], tmp_path: Path
) -> None:
    logger, console = agent_logger
    failures.open_run_log(tmp_path)
    try:
        for kind in (ValueError, ValueError, KeyError, ValueError):
            error = _raise(kind)
            logger.error("Exception during rollout.", exc_info=(type(error), error, error.__traceback__))
    finally:
        failures.close_run_log()
    shown = console.getvalue()
    assert shown.count("Traceback") == 2  # one ValueError, one KeyError
    assert "later ValueError at test_failures.py" in shown and "run.log" in shown
    assert (tmp_path / "run.log").read_text().count("Traceback") == 2  # the two hidden ones


def test_error_key_is_type_and_innermost_location() -> None:
    assert failures.error_key(_raise(ValueError)).startswith("ValueError at test_failures.py:")


def test_the_flat_reward_warning_comes_once_after_n_flat_steps() -> None:
    watch = FlatRewardWatch(3)
    flat = {"groups/valid": 8, "groups/constant": 8, "train/datums": 32}
    moving = {"groups/valid": 8, "groups/constant": 5, "train/datums": 32}
    seen = [
        watch.see(step, m)
        for step, m in enumerate([flat, flat, moving, flat, {"train/datums": 0}, flat, flat])
    ]
    assert [i for i, w in enumerate(seen) if w] == [5]
    assert "steps 3-5 had nothing to learn from" in str(seen[5]) and "What the offline simulator" in str(
        seen[5]
    )
    assert FlatRewardWatch(0).see(0, flat) is None


def test_a_resumed_runs_summary_names_its_steps() -> None:
    lines = summary_lines("Hello 1024", [0.1, 0.2, 0.3, 0.4], [], {}, 1.0, first_step=4)
    assert "steps trained:      4 (step 4 -> step 7, resumed at step 4)" in lines


AGENT = textwrap.dedent(
    """
    import sys
    import agentlightning as agl
    from agl_tinker import TrainConfig
    from agl_tinker.algorithm import fit

    async def broken(task, llm):
        raise ValueError("boom")

    config = TrainConfig(log_path=sys.argv[1], max_steps=3, batch_size=4, group_size=4, max_empty_steps=2)
    try:
        fit(agl.rollout(broken), config, [{"x": i} for i in range(8)], n_runners=2)
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
    """
)


@pytest.mark.slow
def test_an_agent_that_always_raises_gives_a_short_readable_output(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    run = subprocess.run(
        [sys.executable, "-c", AGENT, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    assert len(out.splitlines()) <= 30, out  # 32 failed rollouts: once 32 tracebacks
    assert out.count("Traceback") == 1 and "later ValueError at <string>:" in out, out
    assert "excluded 16/16: failed 16" in out
    assert out.count("had no rollout to train on") == 1  # the final error, once
    assert (tmp_path / "run" / "run.log").read_text().count("ValueError: boom") >= 31
