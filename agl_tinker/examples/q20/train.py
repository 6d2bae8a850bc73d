"""20 Questions: dry run, training and evaluation of the simulator's (or Tinker's) base model.

``dryrun`` plays a few games against the untrained policy, served by the same endpoint training
uses, and prints the transcripts: a check that the agent, the tools and the endpoint fit together
before spending anything on training.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agentlightning.store.memory import InMemoryLightningStore

from agl_tinker.algorithm import fit
from agl_tinker.backend import backend_name, get_tokenizer, service_client
from agl_tinker.endpoint.start import EndpointConfig, start_endpoint
from agl_tinker.examples.q20 import presets
from agl_tinker.examples.q20.agent import Q20Task, q20_agent
from agl_tinker.examples.q20.evaluate import GameProgress, Summary, evaluate, load_dataset
from agl_tinker.examples.q20.presets import MODEL, default_log_path
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.report import summary_lines
from agl_tinker.loop.train import TrainResult

REQUIRED_FIELDS = ("category", "answer", "search_enabled")


def q20_config(log_path: str, *, ci: bool = False, **overrides: Any) -> TrainConfig:
    """20 Questions' ``TrainConfig``: :data:`presets.DEFAULTS` (or ``CI``), then ``overrides``."""
    return TrainConfig(log_path=log_path, **{**(presets.CI if ci else presets.DEFAULTS), **overrides})


def training_tasks(backend: str | None = None, *, ci: bool = False) -> list[Q20Task]:
    """The training secrets: split ``train``, plus ``live`` when ``backend`` (default
    ``$AGL_TINKER_BACKEND``) is the real service. The ``live`` secrets are words the offline
    simulator never says, so offline they would only be lost games that teach nothing.
    ``ci``: only :data:`presets.CI_SECRETS` (the ``--ci`` run), whatever the backend."""
    if ci:
        return [task for task in load_dataset("train") if task["answer"] in presets.CI_SECRETS]
    live = load_dataset("live") if backend_name(backend) == "live" else []
    return load_dataset("train") + live


def validation_tasks() -> list[Q20Task]:
    """The validation games: every held-out secret :data:`presets.VAL_GAMES_PER_SECRET` times."""
    return load_dataset("val") * presets.VAL_GAMES_PER_SECRET


def run_train(
    config: TrainConfig,
    n_runners: int = 2,
    on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
    *,
    ci: bool = False,
) -> TrainResult:
    """One-click training: store, algorithm and runner processes in one command. ``ci``: train on
    :data:`presets.CI_SECRETS` only (``q20 train --ci``, with :data:`presets.CI`)."""
    return fit(
        q20_agent,
        config,
        training_tasks(ci=ci),
        validation_tasks(),
        n_runners=n_runners,
        required_fields=REQUIRED_FIELDS,
        on_step=on_step,
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
        summary = await evaluate(
            url,
            MODEL,
            None,
            tasks,
            out_path,
            concurrency=4,
            temperature=1.0,
            seed=seed,
            progress=GameProgress("dryrun"),
        )
    return summary


async def run_evaluate_offline(split: str, out_path: str | Path, limit: int | None) -> Summary:
    """Evaluate the backend's base model (the simulator offline) on ``split``."""
    tasks = load_dataset(None if split == "all" else split)[:limit]
    async with base_model_endpoint() as url:
        return await evaluate(
            url,
            MODEL,
            None,
            tasks,
            out_path,
            concurrency=8,
            temperature=0.7,
            seed=0,
            progress=GameProgress("evaluate"),
        )


def print_train_summary(result: TrainResult) -> None:
    paths = {
        "metrics": result.metrics_path,
        "checkpoints": result.checkpoints_path,
        "final weights": result.final_sampler_path,
        "reward curve PNG": result.curve_path,
    }
    lines = summary_lines(
        "20 Questions", result.rewards, result.evals, paths, result.seconds, first_step=result.start_step
    )
    rates = [(e["step"], e.get("eval/reward/positive_frac")) for e in result.evals]
    rates = [(step, rate) for step, rate in rates if rate is not None]
    if rates:  # a game's reward is > 0 exactly when it is won
        (first_step, first), (last_step, last) = rates[0], rates[-1]
        at = next(i for i, line in enumerate(lines) if line.startswith("wall time:"))
        lines.insert(
            at, f"validation win rate: {first:.0%} (step {first_step}) -> {last:.0%} (step {last_step})"
        )
    for line in lines:
        print(line)


__all__: Sequence[str] = [
    "MODEL",
    "default_log_path",
    "print_train_summary",
    "q20_config",
    "run_dryrun",
    "run_evaluate_offline",
    "run_train",
    "training_tasks",
    "validation_tasks",
]
