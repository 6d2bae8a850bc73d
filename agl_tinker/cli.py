"""The ``agl-tinker`` console script: the examples, offline by default (``AGL_TINKER_BACKEND=live`` for Tinker)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import enum
import inspect
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chz
from chz.blueprint import (
    ConstructionException,
    ExtraneousBlueprintArg,
    InvalidBlueprintArg,
    MissingBlueprintArg,
)

from agl_tinker.heavy_import import import_agentlightning
from agl_tinker.viewer import commands as viewer_commands


def _smoke(args: argparse.Namespace) -> int:
    from agl_tinker.smoke import run_smoke

    result = run_smoke(model=args.model, steps=args.steps, learning_rate=args.lr)
    print(f"before training: {result.before!r}")
    for step, loss in enumerate(result.losses):
        print(f"step {step}: cross-entropy loss {loss:.4f}")
    print(f"after training:  {result.after!r}")
    print(f"done in {result.seconds:.1f}s")
    return 0


def _store(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    import_agentlightning()
    from agl_tinker.split_store import DEFAULT_LEAVE_AFTER_S, RunnerPresence, serve_store

    timeout = DEFAULT_LEAVE_AFTER_S if args.runner_timeout is None else args.runner_timeout
    if timeout <= 0:
        raise UsageError(f"--runner-timeout must be > 0 seconds, got {timeout}")
    presence = RunnerPresence(leave_after_s=timeout)
    if not args.verbose:  # its stop line ("received cancellation signal") is a warning: ours says it
        logging.getLogger("agentlightning.utils.server_launcher").setLevel(logging.ERROR)
    print(f"agl-tinker store: serving at http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a store is stopped
        asyncio.run(serve_store(args.host, args.port, args.cors_origins, presence))
    print("agl-tinker store: stopped", flush=True)
    return 0


# -- key=value settings ------------------------------------------------------------------------
#
# Every training command builds a TrainConfig (and its own settings object) with chz, in layers:
# the example's presets, then the command's flags (--steps, --log-path, ...), then key=value
# arguments. `--help` prints chz's table of every setting with its value, source and docstring.
# Nothing heavy is imported and nothing is started until both are built and checked.

_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.]*=")
_STORE_URL = "http://127.0.0.1:4747"  # ok: split mode's documented default, the port of Agent-lightning's `agl store`; --store overrides it


@chz.chz
class OneClickSettings:
    """Settings of a one-click run besides its TrainConfig."""

    n_runners: int = chz.field(default=2, doc="Runner processes started next to the algorithm.")


@chz.chz
class HelloOneClickSettings(OneClickSettings):
    """Settings of a one-click Hello run: where its runners run (processes here, or Ray actors)."""

    runners: typing.Literal["processes", "ray"] = chz.field(
        default="processes", doc="'processes': forked on this machine; 'ray': Ray actors on a Ray cluster."
    )
    ray_address: str | None = chz.field(
        default=None,
        doc="runners=ray: the cluster's host:port (`ray start --head`), or None for a local one.",
    )
    runner_cpus: float = chz.field(default=1.0, doc="runners=ray: CPUs one runner reserves.")
    rollouts_per_runner: int = chz.field(default=1, doc="runners=ray: rollouts one runner runs at once.")
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

    store: str = chz.field(default=_STORE_URL, doc="URL of the store server the runners also use.")


@chz.chz
class RunnerSettings:
    """Settings of the split-mode runner role (it trains nothing, so it takes no TrainConfig)."""

    store: str = chz.field(default=_STORE_URL, doc="URL of the store server the algorithm feeds.")
    n_runners: int = chz.field(default=2, doc="Runner processes to start.")
    report_every: int = chz.field(default=20, doc="Print a progress line per this many finished rollouts.")


def _q20_games_path(command: str) -> str:
    from agl_tinker.examples.q20.presets import default_games_path

    return default_games_path(command)


@chz.chz
class Q20DryrunSettings:
    """Settings of `q20 dryrun`."""

    games: int = chz.field(default=4, doc="Games to play against the untrained policy.")
    out: str = chz.field(
        default_factory=lambda: _q20_games_path("dryrun"),
        doc="JSONL file the games are written to (default: a new directory under the temp dir).",
    )


@chz.chz
class Q20EvaluateSettings:
    """Settings of `q20 evaluate`."""

    split: str = chz.field(default="val", doc="Tasks to play: 'train', 'live', 'val' or 'all'.")
    limit: int | None = chz.field(default=None, doc="Play only the first N tasks (None: all).")
    out: str = chz.field(
        default_factory=lambda: _q20_games_path("evaluate"),
        doc="JSONL file the games are written to (default: a new directory under the temp dir).",
    )
    base_url: str | None = chz.field(
        default=None, doc="OpenAI-compatible /v1 URL to evaluate (None: the backend's base model, offline)."
    )
    model: str = chz.field(default="Qwen/Qwen3-4B-Instruct-2507", doc="Model name to evaluate.")


_FLAG_KEYS = {
    "steps": "max_steps",
    "log_path": "log_path",
    "n_runners": "n_runners",
    "store": "store",
    "games": "games",
    "base_url": "base_url",
    "model": "model",
    "split": "split",
    "limit": "limit",
    "out": "out",
}
"""argparse destination -> setting name: given flags are one more layer, under key=value arguments."""


class UsageError(ValueError):
    """A command-line argument cannot be used; the message says which and what to do."""


def split_key_values(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` -> (arguments for argparse, ``key=value`` settings)."""
    rest: list[str] = []
    settings: list[str] = []
    for arg in argv:
        (settings if _KEY_VALUE.match(arg) else rest).append(arg)
    return rest, settings


def _route(key_values: Sequence[str], targets: Sequence[type], command: str) -> list[list[str]]:
    """Assign each ``key=value`` to the first target with that field; an unknown key is an error."""
    routed: list[list[str]] = [[] for _ in targets]
    known = [set(chz.chz_fields(t)) for t in targets]
    for arg in key_values:
        key = arg.split("=", 1)[0].split(".", 1)[0]
        for names, bucket in zip(known, routed, strict=True):
            if key in names:
                bucket.append(arg)
                break
        else:
            close = difflib.get_close_matches(key, sorted(set().union(*known)), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"unknown setting {key!r} for {command}: {hint}(`{command} --help` lists them)")
    return routed


Layers = Sequence[tuple[str, Mapping[str, Any]]]


def _blueprint(target: type, layers: Layers) -> chz.Blueprint[Any]:
    blueprint = chz.Blueprint(target)
    for name, values in layers:
        if values:
            blueprint.apply(dict(values), layer_name=name)
    return blueprint


def make_settings(target: type, layers: Layers, key_values: Sequence[str]) -> Any:
    """``target`` built by chz from ``layers`` (lowest first), then the ``key=value`` arguments."""
    try:
        return _blueprint(target, layers).apply_from_argv(list(key_values)).make()
    except InvalidBlueprintArg as e:
        raise UsageError(_cast_error(str(e))) from e
    except (ConstructionException, ExtraneousBlueprintArg, MissingBlueprintArg) as e:
        raise UsageError(_one_line(str(e))) from e


def _cast_error(text: str) -> str:
    """chz's multi-line "could not interpret" error as ``name=value: reason``."""
    match = re.search(r"argument '(.*)' provided for param '(.*?)'", text)
    lines = [ln.strip() for ln in text.splitlines()]
    marker = "- Failed to interpret it as a value:"
    reason = lines[lines.index(marker) + 1] if marker in lines[:-1] else ""
    if match is None:
        return _one_line(text)
    return f"{match[2]}={match[1]}: {reason or 'not a valid value'} (`--help` lists the settings and their types)"


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Append --help")]
    return " ".join(lines)


def _flag_values(args: argparse.Namespace, target: type) -> dict[str, Any]:
    names = set(chz.chz_fields(target))
    values = {_FLAG_KEYS[k]: v for k, v in vars(args).items() if k in _FLAG_KEYS and v is not None}
    return {k: v for k, v in values.items() if k in names}


def _train_config_type() -> type:
    from agl_tinker.loop.config import TrainConfig

    return TrainConfig


def _train_layers(
    args: argparse.Namespace, example: str, presets: Any
) -> list[tuple[str, Mapping[str, Any]]]:
    ci = bool(getattr(args, "ci", False))
    return [
        (f"{example} --ci" if ci else f"{example} defaults", presets.CI if ci else presets.DEFAULTS),
        ("a new directory per run", {"log_path": presets.default_log_path()}),
        ("flags", _flag_values(args, _train_config_type())),
    ]


class Command:
    """The settings one command builds: a TrainConfig (training commands) and its own settings."""

    def __init__(self, name: str, own: type, train_layers: Layers | None) -> None:
        self.name = name
        self.own = own
        self.train_layers = train_layers

    def help(self, args: argparse.Namespace) -> str:
        """chz's tables of every ``key=value`` setting, with its value, source and docstring."""
        parts = []
        if self.train_layers is not None:
            from agl_tinker.loop.config import bind_cookbook_types

            bind_cookbook_types()
            table = _blueprint(_train_config_type(), self.train_layers).get_help(color=False)
            parts.append("training settings (TrainConfig), as key=value:\n" + _arguments_of(table))
        table = _blueprint(self.own, [("flags", _flag_values(args, self.own))]).get_help(color=False)
        parts.append(f"settings of {self.name}, as key=value:\n" + _arguments_of(table))
        return "\n".join(parts)

    def build(self, args: argparse.Namespace, key_values: Sequence[str]) -> tuple[Any, Any]:
        """(TrainConfig or None, own settings), both checked: a bad setting raises before anything starts."""
        targets = [self.own] if self.train_layers is None else [_train_config_type(), self.own]
        routed = _route(key_values, targets, self.name)
        own = make_settings(self.own, [("flags", _flag_values(args, self.own))], routed[-1])
        _check_own(own)
        _check_ray_cluster(own)  # seconds before the heavy imports, so an unreachable cluster fails fast
        if self.train_layers is None:
            return None, own
        from agl_tinker.loop.config import bind_cookbook_types
        from agl_tinker.loop.preflight import check_early, check_setup

        raw = _raw_values(self.train_layers, routed[0])
        check_early(str(raw.get("log_path")), str(raw.get("model_name", _default_model())))
        early = early_config(self.train_layers, routed[0])
        early.validate()
        _stop_if_finished(early)
        bind_cookbook_types()  # seconds of imports: only once the cheap checks have passed
        config = make_settings(_train_config_type(), self.train_layers, routed[0])
        check_setup(config)
        return config, own


class RunFinished(Exception):
    """The log path holds a run that already did all its steps: nothing to do (exit status 0)."""


def _stop_if_finished(config: Any) -> None:
    """Raise :class:`RunFinished` with its one line, before any heavy import or server start."""
    from agl_tinker.run.claim import finished_message

    message = finished_message(config)
    if message is not None:
        raise RunFinished(message)


def _raw_values(layers: Layers, key_values: Sequence[str]) -> dict[str, Any]:
    """The settings as given (layers, then ``key=value`` strings), before chz casts or checks them."""
    values: dict[str, Any] = {}
    for _, layer in layers:
        values.update(layer)
    for kv in key_values:
        key, value = kv.split("=", 1)
        values[key] = value
    return values


_COOKBOOK_TYPES = ("AsyncConfig", "StreamMinibatchConfig")
"""Annotations of TrainConfig that name the cookbook's classes (their module imports torch)."""

_NOT_READ = object()
""":func:`_read_value`'s answer for a type it does not read; the setting keeps its default there."""

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _read_value(key: str, text: str, kind: Any) -> Any:
    """``text`` as a value of ``kind`` (scalars, ``None``, ``Literal`` choices, enums, unions of them).

    Raises :class:`UsageError` naming the setting when ``text`` is none of them; returns
    :data:`_NOT_READ` for any other type (containers), which the Blueprint reads later.
    """
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    readable = False
    for option in options:
        if typing.get_origin(option) is typing.Literal:
            readable = True
            if text in typing.get_args(option):
                return text
        elif isinstance(option, type) and issubclass(option, enum.Enum):
            readable = True
            if text in {m.value for m in option}:
                return option(text)
        elif option is type(None):
            readable = True
            if text == "None":
                return None
        elif option is bool:
            readable = True
            if text.lower() in _BOOLS:
                return _BOOLS[text.lower()]
        elif option in (int, float, str):
            readable = True
            with contextlib.suppress(ValueError):
                return option(text)
    if not readable:
        return _NOT_READ
    wanted = " or ".join(
        repr(list(typing.get_args(o)))
        if typing.get_origin(o) is typing.Literal
        else getattr(o, "__name__", str(o))
        for o in options
    )
    raise UsageError(
        f"{key}={text}: Could not cast {text!r} to {wanted} (`--help` lists the settings and their types)"
    )


def early_config(layers: Layers, key_values: Sequence[str]) -> Any:
    """A ``TrainConfig`` of the given settings, built without chz's Blueprint, for a first check.

    Building the Blueprint resolves ``async_config``'s and ``stream_minibatch_config``'s cookbook
    types, whose module imports torch (seconds). This takes the preset layers as they are and reads
    the ``key=value`` text of settings of plain types (numbers, flags, names, choices), so that
    ``TrainConfig.validate`` reports an unusable value before that cost. Settings of other types
    (containers, the cookbook's, dotted keys) keep their defaults here, which can only skip a
    check, never invent an error; the Blueprint-built config is validated in full afterwards.

    Raises:
        UsageError: a ``key=value`` whose text is not a value of the setting's type.
    """
    from agl_tinker.loop import config

    annotations = inspect.get_annotations(config.TrainConfig)
    values: dict[str, Any] = {}
    for _, layer in layers:
        values.update({k: v for k, v in layer.items() if k in annotations})
    for kv in key_values:
        key, text = kv.split("=", 1)
        annotation = annotations.get(key)
        if not isinstance(annotation, str) or any(name in annotation for name in _COOKBOOK_TYPES):
            continue
        # The annotation evaluated in its module, as chz itself does when it builds a Blueprint.
        value = _read_value(key, text, eval(annotation, vars(config)))
        if value is not _NOT_READ:
            values[key] = value
    return config.TrainConfig(**values)


def _default_model() -> str:
    from agl_tinker.loop.config import DEFAULT_MODEL

    return DEFAULT_MODEL


def _arguments_of(help_text: str) -> str:
    """The argument table of chz's help, without its entry-point header."""
    marker = "Arguments:\n"
    return help_text.split(marker, 1)[-1] if marker in help_text else help_text


def _check_own(settings: Any) -> None:
    from agl_tinker.loop.config import ConfigError

    for name in ("n_runners", "games", "limit", "rollouts_per_runner", "report_every"):
        value = getattr(settings, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if getattr(settings, "runner_cpus", 0) < 0:
        raise ConfigError(f"runner_cpus must be >= 0, got {settings.runner_cpus}")
    from agl_tinker.examples.q20.presets import SPLITS

    split = getattr(settings, "split", None)
    if split is not None and split not in (*SPLITS, "all"):
        raise ConfigError(f"split must be one of {', '.join(map(repr, (*SPLITS, 'all')))}, got {split!r}")


def _check_ray_cluster(settings: Any) -> None:
    """``runners=ray``: the cluster answers (a TCP probe, no Ray import), else ClusterUnreachable."""
    if getattr(settings, "runners", None) != "ray":
        return
    from agl_tinker.runners.ray_cluster import probe

    if settings.ray_address is not None:
        probe(settings.ray_address)


def _ray_strategy(own: Any) -> Any:
    """The Ray runner strategy ``runners=ray`` asks for, or ``None`` (runner processes)."""
    if getattr(own, "runners", None) != "ray":
        return None
    from agl_tinker.runners.ray_cluster import RayRunnerSettings
    from agl_tinker.runners.ray_runners import RayRunnerStrategy

    settings = RayRunnerSettings(
        address=own.ray_address,
        n_runners=own.n_runners,
        num_cpus=own.runner_cpus,
        rollouts_per_runner=own.rollouts_per_runner,
        store_public_host=own.store_public_host,
    )
    return RayRunnerStrategy(settings, server_host=own.store_host)


def _hello_command(args: argparse.Namespace) -> Command:
    from agl_tinker.examples.hello import presets

    name = "agl-tinker hello" + (f" {args.mode}" if args.mode else "")
    if args.mode == "runner":
        return Command(name, RunnerSettings, None)
    own = AlgoSettings if args.mode == "algo" else HelloOneClickSettings
    return Command(name, own, _train_layers(args, "hello", presets))


def _q20_command(args: argparse.Namespace) -> Command:
    from agl_tinker.examples.q20 import presets

    name = f"agl-tinker q20 {args.mode}"
    if args.mode == "dryrun":
        return Command(name, Q20DryrunSettings, None)
    if args.mode == "evaluate":
        return Command(name, Q20EvaluateSettings, None)
    return Command(name, OneClickSettings, _train_layers(args, "q20", presets))


# -- running, stopping, resuming ---------------------------------------------------------------


class Interrupted(Exception):
    """Ctrl-C stopped a run; the message says where, and how to resume."""


class StepTracker:
    """``on_step`` callback that remembers how far a run got, for the Ctrl-C message."""

    def __init__(self, log_path: str, n_steps: int | None = None) -> None:
        self.log_path = log_path
        self.n_steps = n_steps
        self.last_step: int | None = None

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.last_step = step

    def stopped_message(self, log_path_given: bool) -> str:
        """``stopped at step N; rerun ... to resume from checkpoint ...`` (steps 0-based, as everywhere)."""
        from tinker_cookbook import checkpoint_utils

        if self.last_step is None:
            stopped = "stopped"
        elif self.n_steps is not None and self.last_step + 1 >= self.n_steps:
            stopped = f"stopped after the last step ({self.last_step}), before the final checkpoint"
        else:
            stopped = f"stopped at step {self.last_step + 1}"
        again = "rerun the same command" if log_path_given else f"rerun with --log-path {self.log_path}"
        checkpoint = checkpoint_utils.get_last_checkpoint(self.log_path)
        if checkpoint is None:
            return f"{stopped}, before the first checkpoint; {again} to start again"
        return f"{stopped}; {again} to resume from checkpoint {checkpoint.name} ({checkpoint.state_path})"


def _train(args: argparse.Namespace, config: Any, run: Callable[[StepTracker], Any]) -> Any:
    """``run(on_step)``, with Ctrl-C turned into :class:`Interrupted` carrying the resume hint."""
    tracker = StepTracker(config.log_path, config.max_steps)
    try:
        return run(tracker)
    except KeyboardInterrupt:
        given = bool(args.log_path) or any(kv.startswith("log_path=") for kv in args.key_values)
        raise Interrupted(tracker.stopped_message(given)) from None


def _hello(args: argparse.Namespace) -> int:
    config, own = _hello_command(args).build(args, args.key_values)
    import_agentlightning()  # only once the settings are known to be usable
    if args.mode in ("algo", "runner"):
        from agl_tinker.run.reach import check_store

        check_store(own.store)  # within seconds, one line naming the URL
    if config is None:
        from agl_tinker.examples.hello.train import run_runners

        label = "Hello 1024 runners"
        processes = f"{own.n_runners} runner process{'es' if own.n_runners != 1 else ''}"
        print(f"{label}: connected to the store at {own.store}; {processes}", flush=True)
        stopped = run_runners(own.store, own.n_runners, every=own.report_every, verbose=args.verbose)
        print(stopped.line(label), flush=True)
        return stopped.exit_code
    from agl_tinker.examples.hello.train import print_summary, run_algo, run_one_click

    print(f"Hello 1024 ({args.mode or 'one-click'}), logging to {config.log_path}", flush=True)
    if args.mode == "algo":
        result = _train(args, config, lambda on_step: run_algo(config, own.store, on_step=on_step))
    else:
        strategy = _ray_strategy(own)
        result = _train(
            args,
            config,
            lambda on_step: run_one_click(config, own.n_runners, on_step=on_step, strategy=strategy),
        )
        if strategy is not None and strategy.stats:
            print(
                "Ray runners: "
                + ", ".join(f"{k.split('/')[-1]} {v}" for k, v in sorted(strategy.stats.items()))
            )
    print_summary(result)
    return 0


def _print_transcripts(path: str) -> None:
    """Each game of a JSONL file: its outcome, then every message, tool calls and results included."""
    import json

    with open(path) as f:
        for line in f:
            game = json.loads(line)
            print(
                f"--- {game.get('category')}: {game.get('answer')} (won={game.get('won')}, turns={game.get('turns')})"
            )
            for m in game.get("messages", [])[1:]:
                print(f"  {m['role']:>9}: {_message_text(m)[:140]}")


def _message_text(message: Mapping[str, Any]) -> str:
    text = str(message.get("content") or "").replace("\n", " ").strip()
    calls = [
        f"[calls {c['function']['name']}({c['function']['arguments']})]"
        for c in message.get("tool_calls") or []
    ]
    if message.get("role") == "tool":
        text = f"[{message.get('name') or 'tool'} result] {text}"
    return " ".join([text, *calls] if text else calls)


def _q20(args: argparse.Namespace) -> int:
    import asyncio

    config, own = _q20_command(args).build(args, args.key_values)
    import_agentlightning()  # only once the settings are known to be usable
    from agl_tinker.examples.q20 import train as q20

    if args.mode == "dryrun":
        summary = asyncio.run(q20.run_dryrun(own.games, own.out))
        _print_transcripts(own.out)
        print(summary.table())
        print(f"games written to {own.out}")
        return 0
    if args.mode == "evaluate":
        if own.base_url:
            from agl_tinker.examples.q20.evaluate import main as evaluate_main

            argv = ["--base-url", own.base_url, "--model", own.model, "--split", own.split, "--out", own.out]
            argv += ["--limit", str(own.limit)] if own.limit else []
            return evaluate_main(argv)
        summary = asyncio.run(q20.run_evaluate_offline(own.split, own.out, own.limit))
        print(summary.table())
        print(f"games written to {own.out}")
        return 0
    print(f"20 Questions training, logging to {config.log_path}", flush=True)
    result = _train(
        args, config, lambda on_step: q20.run_train(config, own.n_runners, on_step=on_step, ci=args.ci)
    )
    q20.print_train_summary(result)
    return 0


def _sim_server(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from fakes.wire import serve_forever

    def ready(url: str) -> None:
        print(f"agl-tinker sim-server: Tinker simulator at {url}", flush=True)
        print(f"  export AGL_TINKER_BACKEND=live TINKER_BASE_URL={url} TINKER_API_KEY=tml-local", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the server is stopped
        asyncio.run(serve_forever(args.host, args.port, ready))
    return 0


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-h", "--help", action="store_true", help="show this help and every key=value setting"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="also show servers' logs"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agl-tinker", description=__doc__)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at INFO level (servers' logs, tracebacks of errors)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    smoke = sub.add_parser("smoke", help="sample, fine-tune a few steps and sample again")
    smoke.add_argument("--model", default="Qwen/Qwen3-4B-Instruct-2507")
    smoke.add_argument("--steps", type=int, default=5)
    smoke.add_argument("--lr", type=float, default=5e-2)
    smoke.set_defaults(func=_smoke)

    store = sub.add_parser(
        "store",
        help="serve an in-memory LightningStore for split mode (Agent-lightning's API, faster server)",
        description="The same store and HTTP API as `agl store`, with a lighter request path "
        "(agl_tinker.store_server). Binds 127.0.0.1 unless --host says otherwise.",
    )
    store.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0: reachable from other machines)"
    )
    store.add_argument(
        "--port", type=int, default=4747
    )  # ok: same documented split-mode default as _STORE_URL
    store.add_argument(
        "--cors-origin", dest="cors_origins", action="append", help="allowed CORS origin (repeatable)"
    )
    store.add_argument(
        "--runner-timeout",
        type=float,
        help="seconds without a call from a runner after which it is reported gone (default 30)",
    )
    store.set_defaults(func=_store)

    hello = sub.add_parser(
        "hello",
        add_help=False,
        help="Hello 1024: train the agent to say it is a given identity",
        description="One-click by default (store, algorithm and runners in one command); "
        "'algo' and 'runner' run the split mode against a store started with `agl-tinker store` (or `agl store`). "
        "Any setting listed below can be given as key=value, e.g. `agl-tinker hello learning_rate=0.01 n_runners=4`.",
    )
    _common_flags(hello)
    hello.add_argument("mode", nargs="?", choices=["algo", "runner"], help="split-mode role")
    hello.add_argument("--ci", action="store_true", help="short configuration (finishes in under a minute)")
    hello.add_argument("--steps", type=int, help="training steps (max_steps=)")
    hello.add_argument("--n-runners", type=int, help="runner processes (n_runners=, default 2)")
    hello.add_argument(
        "--log-path", help="where metrics, checkpoints and the reward curve go; resumes (log_path=)"
    )
    hello.add_argument("--store", help=f"store URL for split mode (store=, default {_STORE_URL})")
    hello.set_defaults(func=_hello, subparser=hello)

    from agl_tinker.examples.q20.presets import SPLITS as q20_splits

    q20 = sub.add_parser(
        "q20",
        add_help=False,
        help="20 Questions with a search tool: dryrun, train, evaluate",
        description="dryrun plays a few games against the untrained policy and prints them; train runs "
        "one-click training; evaluate scores the base model offline, or any OpenAI-compatible model "
        "with --base-url. Any setting listed below can be given as key=value.",
    )
    _common_flags(q20)
    q20.add_argument("mode", choices=["dryrun", "train", "evaluate"])
    q20.add_argument("--games", type=int, help="dryrun: games to play (games=, default 4)")
    q20.add_argument(
        "--ci", action="store_true", help="train: a short configuration (6 steps on 4 fixed secrets)"
    )
    q20.add_argument("--steps", type=int, help="train: training steps (max_steps=)")
    q20.add_argument("--log-path", help="train: where metrics and checkpoints go; resumes (log_path=)")
    q20.add_argument(
        "--base-url", help="evaluate: an OpenAI-compatible /v1 URL (default: the offline base model)"
    )
    q20.add_argument("--model", help="evaluate: model name (model=)")
    q20.add_argument("--split", choices=[*q20_splits, "all"], help="evaluate: tasks to play (default val)")
    q20.add_argument("--limit", type=int, help="evaluate: play only the first N tasks")
    q20.add_argument("--out", help="dryrun/evaluate: JSONL file for the games")
    q20.set_defaults(func=_q20, subparser=q20)

    sim_server = sub.add_parser(
        "sim-server",
        help="serve the Tinker simulator over the real SDK's HTTP protocol (for live mode offline)",
        description="The offline Tinker simulator behind Tinker's HTTP API: point the tinker SDK at the "
        "printed URL with TINKER_BASE_URL and any tml- API key. Knobs: AGL_TINKER_SIM_* (model, "
        "checkpoints) and AGL_TINKER_WIRE_* (wire faults); see fakes/README.md.",
    )
    sim_server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sim_server.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    sim_server.set_defaults(func=_sim_server)
    viewer_commands.add_parsers(sub, _common_flags)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], Command]] = {
    "hello": _hello_command,
    "q20": _q20_command,
    **viewer_commands.COMMANDS,
}
"""Commands that take ``key=value`` settings, and how each builds its settings."""


def _print_help(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    print(parser.format_help())
    print(_COMMANDS[args.command](args).help(args))


def _error_line(error: BaseException) -> str:
    return _one_line(str(error)) or type(error).__name__


_USER_ERRORS = (
    ("agl_tinker.loop.config", "ConfigError"),
    ("agl_tinker.backend", "BackendError"),
    ("agl_tinker.loop.data", "DatasetError"),
    ("agl_tinker.examples.q20.evaluate", "DatasetError"),
    ("agl_tinker.runners.ray_cluster", "ClusterUnreachable"),
)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: reported in one line, without a traceback (unless -v).

    Looked up among the modules already imported: an error can only come from one of those, and
    a misconfiguration must not wait for heavy imports to be reported.
    """
    found = [getattr(sys.modules[m], name) for m, name in _USER_ERRORS if m in sys.modules]
    return (UsageError, *found)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2: unusable settings, 130: stopped by Ctrl-C)."""
    rest, key_values = split_key_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(rest)
    args.key_values = key_values
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        if args.command in _COMMANDS and getattr(args, "help", False):
            _print_help(args.subparser, args)
            return 0
        if key_values and args.command not in _COMMANDS:
            raise UsageError(f"agl-tinker {args.command} takes no key=value settings: {' '.join(key_values)}")
        return int(args.func(args))
    except RunFinished as done:
        print(done, flush=True)
        return 0
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"agl-tinker {args.command}: stopped", file=sys.stderr)
        return 130
    except Exception as error:
        if verbose:
            raise
        errors = sys.modules.get("agl_tinker.loop.errors")  # imported by any run that can stop with a reason
        if errors is not None and isinstance(error, errors.RUN_ERRORS):
            print(f"agl-tinker: error: {error}", file=sys.stderr)  # the run's own reason; no traceback
            return 1
        if not isinstance(error, _expected_errors()):
            raise
        print(f"agl-tinker: error: {_error_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
