"""``agl.emit_reward(r)`` with default arguments reaches the store and trains.

Agent-lightning's runner tracers send an agent's spans to the store over OTLP; with the
opentelemetry exporter this project installs they went to an absent collector at localhost:4318
instead, so every rollout of an agent that rewards this way (as the README's do) ended
``no_reward`` and a run trained nothing, exiting 0. These runs use only public entry points.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.utils.otlp import LightningStoreOTLPExporter

from agl_tinker import algorithm as algo
from agl_tinker.examples.clients import openai_client
from agl_tinker.examples.hello.agent import hello_dataset, prompt_for, score
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.train import TrainResult
from agl_tinker.runners.tracing import exporter_endpoint


async def rewarding_rollout(task: dict[str, str], llm: agl.LLM) -> None:
    """The README's agent shape, rewarding through ``agl.emit_reward`` and returning nothing."""
    client = openai_client(llm.get_base_url(), llm.api_key)
    answer = await client.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": prompt_for(task["identity"])}], max_tokens=16
    )
    agl.emit_reward(score(answer.choices[0].message.content or "", task["identity"]))


def _config(tmp_path: Path) -> TrainConfig:
    return TrainConfig(
        log_path=str(tmp_path / "run"),
        max_steps=1,
        batch_size=2,
        group_size=2,
        max_tokens=16,
        eval_every=0,
        save_every=0,
        rollout_timeout_s=60.0,
    )


def _assert_trained(result: TrainResult | None) -> None:
    assert result is not None and result.steps, "the run did not finish a step"
    step = result.steps[0]
    assert step.get("excluded/no_reward", 0) == 0, step
    assert step["train/datums"] > 0, step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_switching_the_exporter_to_the_store_switches_where_it_posts() -> None:
    exporter = LightningStoreOTLPExporter()
    exporter.enable_store_otlp("http://127.0.0.1:9/v1/traces", "ro-1", "at-1")
    assert exporter_endpoint(exporter) == "http://127.0.0.1:9/v1/traces"


@pytest.mark.slow
def test_fit_trains_an_agent_that_calls_emit_reward(tmp_path: Path) -> None:
    result = algo.fit(agl.rollout(rewarding_rollout), _config(tmp_path), hello_dataset()[:8], n_runners=1)
    _assert_trained(result)


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["fast_runner", "agl_default"])
def test_trainer_trains_an_agent_that_calls_emit_reward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: str
) -> None:
    """``fast_runner()``, and Agent-lightning's default runner (AgentOps tracer) as its docs set it up."""
    monkeypatch.chdir(tmp_path)  # AgentOps writes agentops.log into the working directory
    algorithm = algo.TinkerAlgorithm(_config(tmp_path), show_progress=False)
    kwargs: dict[str, Any] = {"runner": algo.fast_runner()} if runner == "fast_runner" else {}
    trainer = agl.Trainer(algorithm=algorithm, n_runners=1, port=_free_port(), **kwargs)
    trainer.fit(agl.rollout(rewarding_rollout), train_dataset=hello_dataset()[:8])
    _assert_trained(algorithm.result)
