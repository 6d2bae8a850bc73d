"""20 Questions: dry run, training and evaluation of the simulator's (or Tinker's) base model.

``dryrun`` plays a few games against the untrained policy, served by the same endpoint training
uses, and prints the transcripts: a check that the agent, the tools and the endpoint fit together
before spending anything on training.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from agentlightning.store.memory import InMemoryLightningStore

from agl_tinker.algo import fit
from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.config import TrainConfig
from agl_tinker.endpoint import EndpointConfig, start_endpoint
from agl_tinker.report import summary_lines
from agl_tinker.train import TrainResult
from examples.q20.agent import q20_agent
from examples.q20.evaluate import Summary, evaluate, load_dataset

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
REQUIRED_FIELDS = ("category", "answer", "search_enabled")


@dataclass(frozen=True)
class Q20Settings:
    log_path: str
    steps: int = 20
    batch_size: int = 8
    group_size: int = 4
    learning_rate: float = 3e-2
    n_runners: int = 2
    max_tokens: int = 96

    @classmethod
    def ci(cls, log_path: str) -> Q20Settings:
        return cls(log_path=log_path, steps=3, batch_size=4, group_size=4)

    def config(self) -> TrainConfig:
        return TrainConfig(
            log_path=self.log_path,
            model_name=MODEL,
            max_steps=self.steps,
            batch_size=self.batch_size,
            group_size=self.group_size,
            learning_rate=self.learning_rate,
            lora_rank=8,
            eval_every=5,
            save_every=5,
            max_tokens=self.max_tokens,
            max_context_tokens=8192,
            rollout_timeout_s=300.0,
        )


def default_log_path() -> str:
    return os.path.join(tempfile.gettempdir(), "agl-tinker", f"q20-{time.strftime('%Y%m%d-%H%M%S')}")


def run_train(settings: Q20Settings) -> TrainResult:
    """One-click training: store, algorithm and runner processes in one command."""
    return fit(
        q20_agent,
        settings.config(),
        load_dataset("train"),
        load_dataset("val"),
        n_runners=settings.n_runners,
        required_fields=REQUIRED_FIELDS,
    )


@asynccontextmanager
async def base_model_endpoint(max_tokens: int = 96) -> AsyncIterator[str]:
    """Serve the base model of the chosen backend on 127.0.0.1; yields its ``/v1`` URL."""
    sampler = await service_client().create_sampling_client(base_model=MODEL)
    endpoint = await start_endpoint(
        EndpointConfig(default_max_tokens=max_tokens, max_context_tokens=8192),
        store=InMemoryLightningStore(),
        sampling_client=sampler,
        base_model=MODEL,
        tokenizer=get_tokenizer(MODEL),
    )
    try:
        yield endpoint.url + "/v1"
    finally:
        await endpoint.stop()


async def run_dryrun(games: int, out_path: str | Path, seed: int = 0) -> Summary:
    """Play ``games`` training games against the untrained policy and print each transcript."""
    tasks = load_dataset("train")[:games]
    async with base_model_endpoint() as url:
        summary = await evaluate(url, MODEL, None, tasks, out_path, concurrency=4, temperature=1.0, seed=seed)
    return summary


async def run_evaluate_offline(split: str, out_path: str | Path, limit: int | None) -> Summary:
    """Evaluate the backend's base model (the simulator offline) on ``split``."""
    tasks = load_dataset(None if split == "all" else split)[:limit]
    async with base_model_endpoint() as url:
        return await evaluate(url, MODEL, None, tasks, out_path, concurrency=8, temperature=0.7, seed=0)


def print_train_summary(result: TrainResult) -> None:
    paths = {
        "metrics": result.metrics_path,
        "checkpoints": result.checkpoints_path,
        "final weights": result.final_sampler_path,
        "reward curve PNG": result.curve_path,
    }
    for line in summary_lines("20 Questions", result.rewards, result.evals, paths, result.seconds):
        print(line)


__all__: Sequence[str] = [
    "Q20Settings",
    "default_log_path",
    "print_train_summary",
    "run_dryrun",
    "run_evaluate_offline",
    "run_train",
]
