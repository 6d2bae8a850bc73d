"""A trainer whose runners trace with AgentOps is warned about, before any rollout runs.

Agent-lightning's default tracer fails every rollout of a tool-using agent (see ``check_runner``),
while agents without tool calls train under it (issue 13's emit_reward tests), so the check warns
with a message that names the fix instead of refusing the trainer.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from agentlightning.tracer.agentops import AgentOpsTracer

from agl_tinker.algorithm import check_runner, fast_runner
from agl_tinker.algorithm import tinker_algorithm as algo


@pytest.fixture
def warnings_logged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    # Agent-lightning's logging setup stops propagation, which blinds caplog: record the calls.
    logged: list[str] = []
    monkeypatch.setattr(algo.logger, "warning", lambda msg, *a: logged.append(msg % a if a else msg))
    return logged


def test_an_agentops_runner_is_warned_about_with_the_fix(warnings_logged: list[str]) -> None:
    agentops_runner = SimpleNamespace(tracer=AgentOpsTracer())
    check_runner(SimpleNamespace(strategy=SimpleNamespace(role="both"), runner=agentops_runner))
    assert len(warnings_logged) == 1
    assert "AgentOps" in warnings_logged[0] and "fast_runner()" in warnings_logged[0]


def test_the_project_runner_and_algorithm_only_trainers_pass_silently(warnings_logged: list[str]) -> None:
    check_runner(SimpleNamespace(strategy=SimpleNamespace(role="both"), runner=fast_runner()))
    agentops_runner: Any = SimpleNamespace(tracer=AgentOpsTracer())
    # split mode: this process runs only the algorithm; its runners are built elsewhere
    check_runner(SimpleNamespace(strategy=SimpleNamespace(role="algorithm"), runner=agentops_runner))
    assert warnings_logged == []
