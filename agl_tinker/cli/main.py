"""The ``agl-tinker`` console script: the examples, offline by default (``AGL_TINKER_BACKEND=live`` for Tinker).

The parser, which command runs, and how its errors end: a user's mistake is one line and exit
status 2, a run's own stop reason one line and 1, Ctrl-C a resume hint and 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from agl_tinker.cli import examples, services
from agl_tinker.cli.command import Command, RunFinished
from agl_tinker.cli.example_settings import STORE_URL, hello_command, q20_command
from agl_tinker.cli.running import Interrupted
from agl_tinker.cli.settings import UsageError, flags_taking_values, one_line, split_key_values
from agl_tinker.loop.config import DEFAULT_MODEL
from agl_tinker.net import SPLIT_STORE_PORT
from agl_tinker.viewer import commands as viewer_commands

__all__ = ["COMMANDS", "build_parser", "main", "parse_args"]

_DESCRIPTION = "The ``agl-tinker`` console script: the examples, offline by default (``AGL_TINKER_BACKEND=live`` for Tinker)."


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-h", "--help", action="store_true", help="show this help and every key=value setting"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="also show servers' logs"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agl-tinker", description=_DESCRIPTION)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at INFO level (servers' logs, tracebacks of errors)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    smoke = sub.add_parser("smoke", help="sample, fine-tune a few steps and sample again")
    smoke.add_argument("--model", default=DEFAULT_MODEL)
    smoke.add_argument("--steps", type=int, default=5)
    smoke.add_argument("--lr", type=float, default=5e-2)
    smoke.set_defaults(func=services.smoke)

    store = sub.add_parser(
        "store",
        help="serve an in-memory LightningStore for split mode (Agent-lightning's API, faster server)",
        description="The same store and HTTP API as `agl store`, with a lighter request path "
        "(agl_tinker.store_server). Binds 127.0.0.1 unless --host says otherwise.",
    )
    store.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0: reachable from other machines)"
    )
    store.add_argument("--port", type=int, default=SPLIT_STORE_PORT)
    store.add_argument(
        "--cors-origin", dest="cors_origins", action="append", help="allowed CORS origin (repeatable)"
    )
    store.add_argument(
        "--runner-timeout",
        type=float,
        help="seconds without a call from a runner after which it is reported gone (default 30)",
    )
    store.set_defaults(func=services.store)

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
    hello.add_argument("--store", help=f"store URL for split mode (store=, default {STORE_URL})")
    hello.set_defaults(func=examples.hello, subparser=hello)

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
    q20.set_defaults(func=examples.q20, subparser=q20)

    sim_server = sub.add_parser(
        "sim-server",
        help="serve the Tinker simulator over the real SDK's HTTP protocol (for live mode offline)",
        description="The offline Tinker simulator behind Tinker's HTTP API: point the tinker SDK at the "
        "printed URL with TINKER_BASE_URL and any tml- API key. Knobs: AGL_TINKER_SIM_* (model, "
        "checkpoints) and AGL_TINKER_WIRE_* (wire faults); see fakes/README.md.",
    )
    sim_server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sim_server.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    sim_server.set_defaults(func=services.sim_server)
    viewer_commands.add_parsers(sub, _common_flags)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], Command]] = {
    "hello": hello_command,
    "q20": q20_command,
    **viewer_commands.COMMANDS,
}
"""Commands that take ``key=value`` settings, and how each builds its settings."""


def _print_help(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    print(parser.format_help())
    print(COMMANDS[args.command](args).help(args))


def _error_line(error: BaseException) -> str:
    return one_line(str(error)) or type(error).__name__


_USER_ERRORS = (
    ("agl_tinker.loop.config_rules", "ConfigError"),
    ("agl_tinker.backend_error", "BackendError"),
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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line parsed: flags and positionals by argparse, ``key=value`` settings in
    ``key_values`` (a flag's own value stays the flag's: ``--log-path a=b``)."""
    parser = build_parser()
    rest, key_values = split_key_values(argv, flags_taking_values(parser))
    args = parser.parse_args(rest)
    args.key_values = key_values
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2: unusable settings, 130: stopped by Ctrl-C)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    key_values = args.key_values
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        if args.command in COMMANDS and getattr(args, "help", False):
            _print_help(args.subparser, args)
            return 0
        if key_values and args.command not in COMMANDS:
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
