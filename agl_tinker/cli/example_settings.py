"""The example commands' own settings (besides their ``TrainConfig``), and which each command builds.

Per-field rules are chz validators, as the ``TrainConfig``'s are: a value out of range is refused
when the settings are built, in one line naming the setting.
"""

from __future__ import annotations

import argparse
import typing

import chz

from agl_tinker.cli.command import Command, train_layers
from agl_tinker.examples.q20.presets import SPLITS
from agl_tinker.loop.config import DEFAULT_MODEL
from agl_tinker.loop.config_rules import at_least, one_of
from agl_tinker.net import SPLIT_STORE_PORT

__all__ = ["hello_command", "q20_command"]

STORE_URL = f"http://127.0.0.1:{SPLIT_STORE_PORT}"  # split mode's documented default; --store overrides it


@chz.chz
class OneClickSettings:
    """Settings of a one-click run besides its TrainConfig."""

    n_runners: int = chz.field(
        default=2, validator=at_least(1), doc="Runner processes started next to the algorithm."
    )


@chz.chz
class HelloOneClickSettings(OneClickSettings):
    """Settings of a one-click Hello run: where its runners run (processes here, or Ray actors)."""

    runners: typing.Literal["processes", "ray"] = chz.field(
        default="processes",
        validator=one_of(("processes", "ray")),
        doc="'processes': forked on this machine; 'ray': Ray actors on a Ray cluster.",
    )
    ray_address: str | None = chz.field(
        default=None,
        doc="runners=ray: the cluster's host:port (`ray start --head`), or None for a local one.",
    )
    runner_cpus: float = chz.field(
        default=1.0, validator=at_least(0), doc="runners=ray: CPUs one runner reserves."
    )
    rollouts_per_runner: int = chz.field(
        default=1, validator=at_least(1), doc="runners=ray: rollouts one runner runs at once."
    )
    store_host: str = chz.field(
        default="127.0.0.1",
        doc="runners=ray: address the store binds (0.0.0.0 for runners on other machines).",
    )
    store_public_host: str | None = chz.field(
        default=None, doc="runners=ray: host the runners reach the store at (None: store_host)."
    )


@chz.chz
class AlgoSettings:
    """Settings of the split-mode algorithm role besides its TrainConfig."""

    store: str = chz.field(default=STORE_URL, doc="URL of the store server the runners also use.")


@chz.chz
class RunnerSettings:
    """Settings of the split-mode runner role (it trains nothing, so it takes no TrainConfig)."""

    store: str = chz.field(default=STORE_URL, doc="URL of the store server the algorithm feeds.")
    n_runners: int = chz.field(default=2, validator=at_least(1), doc="Runner processes to start.")
    report_every: int = chz.field(
        default=20, validator=at_least(1), doc="Print a progress line per this many finished rollouts."
    )


def _q20_games_path(command: str) -> str:
    from agl_tinker.examples.q20.presets import default_games_path

    return default_games_path(command)


@chz.chz
class Q20DryrunSettings:
    """Settings of `q20 dryrun`."""

    games: int = chz.field(
        default=4, validator=at_least(1), doc="Games to play against the untrained policy."
    )
    out: str = chz.field(
        default_factory=lambda: _q20_games_path("dryrun"),
        doc="JSONL file the games are written to (default: a new directory under the temp dir).",
    )


@chz.chz
class Q20EvaluateSettings:
    """Settings of `q20 evaluate`."""

    split: str = chz.field(
        default="val",
        validator=one_of((*SPLITS, "all")),
        doc="Tasks to play: 'train', 'live', 'val' or 'all'.",
    )
    limit: int | None = chz.field(
        default=None, validator=at_least(1, optional=True), doc="Play only the first N tasks (None: all)."
    )
    out: str = chz.field(
        default_factory=lambda: _q20_games_path("evaluate"),
        doc="JSONL file the games are written to (default: a new directory under the temp dir).",
    )
    base_url: str | None = chz.field(
        default=None, doc="OpenAI-compatible /v1 URL to evaluate (None: the backend's base model, offline)."
    )
    model: str = chz.field(default=DEFAULT_MODEL, doc="Model name to evaluate.")


def _probe_ray_cluster(settings: HelloOneClickSettings) -> None:
    """``runners=ray``: the cluster answers (a TCP probe, no Ray import), else ClusterUnreachable.

    Run before the ``TrainConfig`` is built and checked (seconds of imports), so it fails fast.
    """
    if settings.runners != "ray" or settings.ray_address is None:
        return
    from agl_tinker.runners.ray_cluster import probe

    probe(settings.ray_address)


def hello_command(args: argparse.Namespace) -> Command:
    """``agl-tinker hello [algo|runner]``: one-click (runner processes or Ray actors) or a split-mode role."""
    from agl_tinker.examples.hello import presets

    name = "agl-tinker hello" + (f" {args.mode}" if args.mode else "")
    if args.mode == "runner":
        return Command(name, RunnerSettings, None)
    if args.mode == "algo":
        return Command(name, AlgoSettings, train_layers(args, "hello", presets))
    return Command(name, HelloOneClickSettings, train_layers(args, "hello", presets), _probe_ray_cluster)


def q20_command(args: argparse.Namespace) -> Command:
    """``agl-tinker q20 dryrun|train|evaluate``."""
    from agl_tinker.examples.q20 import presets

    name = f"agl-tinker q20 {args.mode}"
    if args.mode == "dryrun":
        return Command(name, Q20DryrunSettings, None)
    if args.mode == "evaluate":
        return Command(name, Q20EvaluateSettings, None)
    return Command(name, OneClickSettings, train_layers(args, "q20", presets))
