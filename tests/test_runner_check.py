"""The project's runner is the enforced path: a trainer whose runners trace with AgentOps is refused.

Agent-lightning's default tracer fails every rollout of a tool-using agent (see ``check_runner``);
the refusal comes before any rollout runs, with a message that names the fix.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import agentlightning as agl
import pytest
from agentlightning.tracer.agentops import AgentOpsTracer

from agl_tinker.algo import TinkerAlgorithm, check_runner, fast_runner
from agl_tinker.config import ConfigError, TrainConfig
from examples.hello.agent import hello_agent, hello_dataset


def test_stock_trainer_without_the_project_runner_is_refused_before_any_rollout(tmp_path: Path) -> None:
    config = TrainConfig(log_path=str(tmp_path / "run"), max_steps=1, batch_size=2, group_size=2)
    trainer = agl.Trainer(algorithm=TinkerAlgorithm(config), n_runners=1)
    with pytest.raises(ConfigError, match=r"fast_runner\(\)"):
        trainer.fit(hello_agent, train_dataset=hello_dataset("train")[:4])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_runner_check_accepts_the_project_runner_and_algorithm_only_trainers() -> None:
    both = SimpleNamespace(role="both")
    check_runner(SimpleNamespace(strategy=both, runner=fast_runner()))
    agentops_runner = SimpleNamespace(tracer=AgentOpsTracer())
    # split mode: this process runs only the algorithm; its runners are built elsewhere
    check_runner(SimpleNamespace(strategy=SimpleNamespace(role="algorithm"), runner=agentops_runner))
    with pytest.raises(ConfigError, match="AgentOps"):
        check_runner(SimpleNamespace(strategy=both, runner=agentops_runner))
