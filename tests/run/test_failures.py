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

import httpx
import openai
import pytest

from agl_tinker.loop.progress import ProgressDisplay
from agl_tinker.loop.report import summary_lines
from agl_tinker.net import free_port
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


def _step(reward: float, *, flat: bool) -> dict[str, float | int]:
    return {"reward/mean": reward, "groups/valid": 8, "groups/constant": 8 if flat else 3, "train/datums": 32}


def test_a_reward_that_rose_to_its_plateau_gets_a_learnt_note_not_the_warning() -> None:
    """Hello 1024 reaches +1.000 in every group by step 9: its tasks are learnt, nothing is wrong."""
    rewards = [-0.06, 0.0, 0.16, 0.5, 1.0, 1.0, 1.0]
    watch = FlatRewardWatch()  # the default: 3 flat steps
    lines = [watch.see(step, _step(r, flat=step >= 4)) for step, r in enumerate(rewards)]
    assert [i for i, line in enumerate(lines) if line] == [6]
    assert lines[6] == (
        "note: steps 4-6 had nothing left to learn from: every group scored the same, reward +1.000, up from "
        "-0.060 at step 0; the tasks look learnt, and more steps will not change the policy on them"
    )


@pytest.mark.parametrize(
    "rewards",
    [[0.0, 0.0, 0.0], [0.5, 0.2, 0.0, 0.0, 0.0]],
    ids=["flat from the start", "fallen to its plateau"],
)
def test_a_reward_that_never_rose_to_its_plateau_gets_the_warning(rewards: list[float]) -> None:
    watch = FlatRewardWatch()
    first = len(rewards) - 3
    lines = [watch.see(step, _step(r, flat=step >= first)) for step, r in enumerate(rewards)]
    assert lines[:-1] == [None] * (len(rewards) - 1)
    assert str(lines[-1]).startswith(
        f"warning: steps {first}-{first + 2} had nothing to learn from (every group scored the same, reward "
        "+0.000, or no datum trained): the agent may never produce a rewarded answer"
    )


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


def _run_script(source: str, log_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a user's training script in a fresh Python, ``log_path`` as its argument."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", source, str(log_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_an_agent_that_always_raises_gives_a_short_readable_output(tmp_path: Path) -> None:
    run = _run_script(AGENT, tmp_path / "run")
    out = run.stdout + run.stderr
    assert len(out.splitlines()) <= 30, out  # 32 failed rollouts: once 32 tracebacks
    assert out.count("Traceback") == 1 and "later ValueError at <string>:" in out, out
    assert "excluded 16/16: failed 16" in out
    assert out.count("had no rollout to train on") == 1  # the final error, once
    assert (tmp_path / "run" / "run.log").read_text().count("ValueError: boom") >= 31


FLAT_AGENT = textwrap.dedent(
    """
    import sys
    import agentlightning as agl
    from openai import AsyncOpenAI
    from agl_tinker import TrainConfig
    from agl_tinker.algorithm import fit

    async def flat(task, llm):
        client = AsyncOpenAI(base_url=llm.get_base_url(), api_key="unused")
        messages = [{"role": "user", "content": "hi"}]
        await client.chat.completions.create(model=llm.model, messages=messages, max_tokens=8)
        return 0.5

    config = TrainConfig(log_path=sys.argv[1], max_steps=5, batch_size=2, group_size=2, max_tokens=8)
    fit(agl.rollout(flat), config, [{"x": i} for i in range(10)], n_runners=1)
    """
)


@pytest.mark.slow
def test_a_flat_reward_run_says_so_once_pointing_at_dryrun(tmp_path: Path) -> None:
    """A run whose every group scores the same: one warning, after the default 3 flat steps, that
    names the command showing the user's own agent's rollouts (not only 20 Questions')."""
    run = _run_script(FLAT_AGENT, tmp_path / "run")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    warnings = [line for line in out.splitlines() if "had nothing to learn from" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: steps 0-2 "), out
    assert "`agl-tinker dryrun MODULE:FUNCTION tasks=FILE`" in warnings[0]
    assert out.index(warnings[0]) > out.index("step 2 (3/5)") and "step 4 (5/5)" in out


def _log_error(logger: logging.Logger, error: BaseException, message: str) -> None:
    logger.error(message, exc_info=(type(error), error, error.__traceback__))


async def test_a_store_the_runner_cannot_reach_is_a_connection_error_naming_its_address(
    agent_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    """Agent-lightning's runner logs its failed store calls on the agent logger: the summary says
    it could not connect, to which address, and what to check; not that the agent raised."""
    from agentlightning.store.client_server import LightningStoreClient

    logger, console = agent_logger
    port = free_port()
    client = LightningStoreClient(f"http://127.0.0.1:{port}", retry_delays=(), health_retry_delays=())
    try:
        with pytest.raises(Exception) as caught:
            await client.update_attempt("ro-1", "at-1", status="failed")
    finally:
        await client.close()
    for _ in range(3):
        _log_error(logger, caught.value, "Exception during update_attempt.")
    shown = console.getvalue()
    assert shown.count("Exception during update_attempt") == 1, shown  # later ones counted
    assert f"could not connect to 127.0.0.1:{port} (ClientConnectorError)" in shown
    assert "not an error in the agent" in shown and "still running and reachable" in shown
    assert "The agent raised" not in shown


def test_an_endpoint_the_agents_client_cannot_reach_is_a_connection_error_naming_its_url(
    agent_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, console = agent_logger
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    client.close()
    _log_error(logger, caught.value, "Exception during rollout.")
    shown = console.getvalue()
    assert f"could not connect to {url}/chat/completions (APIConnectionError)" in shown, shown
    assert "The agent raised" not in shown


def test_what_counts_as_unreachable() -> None:
    assert failures.unreachable(_raise(ValueError)) is None
    timeout = openai.APITimeoutError(request=httpx.Request("POST", "http://127.0.0.1:1/v1"))
    assert failures.unreachable(timeout) is None  # the peer answered; it was slow
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as e:
            raise RuntimeError("the agent's tool failed") from e
    except RuntimeError as wrapped:
        assert failures.unreachable(wrapped) == ("ConnectionRefusedError", None)
