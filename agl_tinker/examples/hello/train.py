"""Hello 1024 training: one-click (store + algorithm + runners in one command) or split mode.

Split mode: start a store (``agl-tinker store --port PORT``, or Agent-lightning's ``agl store``),
one algorithm process (``agl-tinker hello algo --store http://127.0.0.1:PORT``) and any number of
runner processes (``agl-tinker hello runner --store http://127.0.0.1:PORT``), possibly on other
machines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from agentlightning.execution.client_server import ClientServerExecutionStrategy
from agentlightning.store.client_server import LightningStoreClient

from agl_tinker.algorithm import fit
from agl_tinker.examples.hello import presets
from agl_tinker.examples.hello.agent import hello_agent, hello_dataset
from agl_tinker.examples.hello.presets import default_log_path
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.report import summary_lines
from agl_tinker.loop.train import TrainResult, train
from agl_tinker.runners.split import RunnersStopped, run_split_runners

__all__ = ["default_log_path", "hello_config", "print_summary", "run_algo", "run_one_click", "run_runners"]


def hello_config(log_path: str, *, ci: bool = False, **overrides: Any) -> TrainConfig:
    """Hello 1024's ``TrainConfig``: :data:`presets.DEFAULTS` (or ``CI``), then ``overrides``."""
    return TrainConfig(log_path=log_path, **{**(presets.CI if ci else presets.DEFAULTS), **overrides})


def run_one_click(
    config: TrainConfig,
    n_runners: int = 2,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
    strategy: ClientServerExecutionStrategy | None = None,
) -> TrainResult:
    """Store, algorithm and ``n_runners`` runner processes, all from ``agl.Trainer``;
    ``on_step(step, metrics)`` after each training step. ``strategy`` places the runners
    elsewhere (e.g. Ray actors: :class:`agl_tinker.runners.ray_runners.RayRunnerStrategy`)."""
    return fit(
        hello_agent,
        config,
        hello_dataset("train"),
        hello_dataset("val"),
        n_runners=n_runners,
        required_fields=("identity",),
        on_step=on_step,
        strategy=strategy,
    )


def run_algo(
    config: TrainConfig,
    store_url: str,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
) -> TrainResult:
    """The algorithm alone, against a store server that runners elsewhere also use."""

    async def run() -> TrainResult:
        store = LightningStoreClient(store_url)
        try:
            return await train(
                config,
                store,
                hello_dataset("train"),
                hello_dataset("val"),
                required_fields=("identity",),
                on_step=on_step,
            )
        finally:
            await store.close()  # its HTTP session: unclosed, Python reports it at exit

    return asyncio.run(run())


def run_runners(store_url: str, n_runners: int, *, every: int = 20, verbose: bool = False) -> RunnersStopped:
    """Runner processes that execute the Hello agent for whatever algorithm feeds ``store_url``,
    saying their progress; returns why they stopped (see :mod:`agl_tinker.runners.split`)."""
    return run_split_runners(
        hello_agent, store_url, n_runners, "Hello 1024 runners", every=every, verbose=verbose
    )


def print_summary(result: TrainResult) -> None:
    paths: dict[str, Any] = {
        "metrics": result.metrics_path,
        "checkpoints": result.checkpoints_path,
        "final weights": result.final_sampler_path,
        "reward curve PNG": result.curve_path,
    }
    for line in summary_lines(
        "Hello 1024", result.rewards, result.evals, paths, result.seconds, first_step=result.start_step
    ):
        print(line)
