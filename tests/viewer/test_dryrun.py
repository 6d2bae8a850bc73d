"""Dry runs and evaluation of any agent: the quickstart's, a LangChain agent, the CLI's errors, the report."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agl_tinker.cli import main
from agl_tinker.viewer.dryrun import DryRun, dry_run, load_agent, load_task_list, score
from agl_tinker.viewer.text import format_rollout

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
QUICKSTART = "agl_tinker.examples.quickstart:repeat_rollout"
QUICKSTART_TASKS = "agl_tinker/examples/data/quickstart.csv"


@pytest.mark.slow
def test_dry_runs_of_the_quickstart_and_a_langchain_agent_show_their_calls() -> None:
    questions = [{"question": "What does an elephant look like?", "expected": "grey"}] * 3

    async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        quick = await dry_run(
            load_agent(QUICKSTART), load_task_list(QUICKSTART_TASKS, n=2, where="split=val"), DryRun(MODEL)
        )
        chain = await dry_run(
            load_agent("agl_tinker.examples.frameworks.langchain_agent:langchain_agent"),
            questions,
            DryRun(MODEL, max_tokens=96),
        )
        return quick, chain

    quick, chain = asyncio.run(both())
    assert [r["task"]["split"] for r in quick] == ["val", "val"]
    for row in quick:
        assert row["exclusion"] is None and row["reward"] in (0.0, 0.5, 1.0)
        (call,) = row["calls"]
        assert call["messages"][0]["content"].startswith("Repeat exactly")
        assert call["completion"]["role"] == "assistant" and call["response"]
        text = format_rollout(row)
        assert "user: Repeat exactly" in text and "=> reward" in text
    for row in chain:  # a framework agent: tools are offered on every call, and every call is recorded
        assert row["calls_total"] >= 1 and row["tools"]["offered"] == row["calls_total"]
        assert row["calls"][0]["messages"][0]["role"] == "system"


def test_score_reports_mean_spread_exclusions_and_each_task() -> None:
    rows = [
        {"group": 0, "task": {"q": "a"}, "reward": 1.0, "exclusion": None},
        {"group": 0, "task": {"q": "a"}, "reward": 0.0, "exclusion": None},
        {"group": 1, "task": {"q": "b"}, "reward": None, "exclusion": "failed"},
    ]
    report = score(rows)
    assert (report.rollouts, report.scored, report.mean) == (3, 2, 0.5)
    assert report.stdev == pytest.approx(0.7071, abs=1e-4)
    assert report.excluded == {"failed": 1}
    assert [(v, n) for _, v, n in report.per_task] == [(0.5, 2), (None, 1)]
    assert "excluded: failed 1" in report.lines()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dryrun"], "needs the agent"),
        (["dryrun", "no_such_module_xyz:agent", f"tasks={QUICKSTART_TASKS}"], "no_such_module_xyz"),
        (["dryrun", "agl_tinker.examples.quickstart", f"tasks={QUICKSTART_TASKS}"], "MODULE:NAME"),
        (["evaluate", QUICKSTART, "tasks=missing.csv"], "missing.csv"),
        (["dryrun", QUICKSTART, f"tasks={QUICKSTART_TASKS}", "where=split=nope"], "no tasks"),
        (["dryrun", QUICKSTART, f"tasks={QUICKSTART_TASKS}", "n=0"], "n must be >= 1"),
        (["dryrun", QUICKSTART, "task=x"], "unknown setting 'task'"),
    ],
)
def test_cli_reports_a_bad_agent_or_task_list_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_default_model_is_trainings() -> None:
    from agl_tinker.loop.config import DEFAULT_MODEL
    from agl_tinker.viewer.commands import DryrunSettings

    assert DryrunSettings(tasks="t.csv").model_name == DEFAULT_MODEL
