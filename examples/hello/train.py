"""Hello 1024 training: one-click (store + algorithm + runners in one command) or split mode.

Split mode: start a store (``agl-tinker store --port 4747``, or Agent-lightning's ``agl store``),
one algorithm process (``agl-tinker hello algo --store http://127.0.0.1:4747``) and any number of
runner processes (``agl-tinker hello runner --store http://127.0.0.1:4747``), possibly on other
machines.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import agentlightning as agl
from agentlightning.store.client_server import LightningStoreClient

from agl_tinker.algo import LeanServerStrategy, fast_runner, fit
from agl_tinker.config import TrainConfig
from agl_tinker.report import summary_lines
from agl_tinker.train import TrainResult, train
from examples.hello.agent import hello_agent, hello_dataset


@dataclass(frozen=True)
class HelloSettings:
    """The knobs the command line exposes; everything else is TrainConfig's defaults."""

    log_path: str
    steps: int = 20
    batch_size: int = 8
    group_size: int = 4
    learning_rate: float = 3e-2
    lora_rank: int = 8
    eval_every: int = 5
    save_every: int = 5
    n_runners: int = 2
    max_tokens: int = 32

    @classmethod
    def ci(cls, log_path: str) -> HelloSettings:
        """A short configuration that finishes in well under a minute offline."""
        return cls(log_path=log_path, steps=6, batch_size=8, group_size=4, eval_every=3, save_every=3)

    def config(self) -> TrainConfig:
        return TrainConfig(
            log_path=self.log_path,
            max_steps=self.steps,
            batch_size=self.batch_size,
            group_size=self.group_size,
            learning_rate=self.learning_rate,
            lora_rank=self.lora_rank,
            eval_every=self.eval_every,
            save_every=self.save_every,
            max_tokens=self.max_tokens,
            min_valid_per_group=2,
            rollout_timeout_s=60.0,
        )


def default_log_path() -> str:
    return os.path.join(tempfile.gettempdir(), "agl-tinker", f"hello-{time.strftime('%Y%m%d-%H%M%S')}")


def run_one_click(
    settings: HelloSettings, on_step: Callable[[int, Mapping[str, Any]], None] | None = None
) -> TrainResult:
    """Store, algorithm and ``n_runners`` runner processes, all from ``agl.Trainer``;
    ``on_step(step, metrics)`` after each training step."""
    return fit(
        hello_agent,
        settings.config(),
        hello_dataset("train"),
        hello_dataset("val"),
        n_runners=settings.n_runners,
        required_fields=("identity",),
        on_step=on_step,
    )


def run_algo(settings: HelloSettings, store_url: str) -> TrainResult:
    """The algorithm alone, against a store server that runners elsewhere also use."""

    async def run() -> TrainResult:
        store = LightningStoreClient(store_url)
        try:
            return await train(
                settings.config(),
                store,
                hello_dataset("train"),
                hello_dataset("val"),
                required_fields=("identity",),
            )
        finally:
            await store.close()  # its HTTP session: unclosed, Python reports it at exit

    return asyncio.run(run())


def run_runners(store_url: str, n_runners: int) -> None:
    """Runner processes that execute the Hello agent for whatever algorithm feeds ``store_url``."""
    host_port = store_url.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.partition(":")
    trainer = agl.Trainer(
        n_runners=n_runners,
        runner=fast_runner(),
        strategy=LeanServerStrategy(
            role="runner", n_runners=n_runners, server_host=host, server_port=int(port or 4747)
        ),
    )
    trainer.fit(hello_agent)


def print_summary(result: TrainResult) -> None:
    paths: dict[str, Any] = {
        "metrics": result.metrics_path,
        "checkpoints": result.checkpoints_path,
        "final weights": result.final_sampler_path,
        "reward curve PNG": result.curve_path,
    }
    for line in summary_lines("Hello 1024", result.rewards, result.evals, paths, result.seconds):
        print(line)
