"""The viewer's ``agl-tinker`` subcommands: ``dryrun``, ``evaluate`` and ``view``.

:func:`add_parsers` adds them to the CLI's parser; :data:`COMMANDS` says how each builds its
``key=value`` settings (the CLI's :class:`~agl_tinker.cli.command.Command`). Importing this module is
cheap: everything heavy is imported once the settings are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import chz

from agl_tinker.loop.config import DEFAULT_MODEL
from agl_tinker.loop.config_rules import at_least, greater_than

__all__ = ["COMMANDS", "DryrunSettings", "EvaluateSettings", "add_parsers"]


@chz.chz
class DryrunSettings:
    """Settings of `agl-tinker dryrun AGENT`."""

    tasks: str = chz.field(
        doc="Tasks: a CSV/JSONL/JSON/Parquet file, or MODULE:NAME of a list of task dicts."
    )
    n: int | None = chz.field(
        default=4, validator=at_least(1, optional=True), doc="Run the first N tasks (None: all)."
    )
    where: str | None = chz.field(default=None, doc="FIELD=VALUE: only tasks whose field has that value.")
    model_name: str = chz.field(default=DEFAULT_MODEL, doc="Base model the policy is (as in training).")
    checkpoint: str | None = chz.field(
        default=None,
        doc="A sampler path (tinker://...) or a run's log path (its last checkpoint). None: base.",
    )
    temperature: float = chz.field(
        default=1.0, validator=at_least(0), doc="Sampling temperature (training's default)."
    )
    max_tokens: int = chz.field(
        default=256, validator=at_least(1), doc="max_tokens of a completion when the agent passes none."
    )
    group_size: int = chz.field(default=1, validator=at_least(1), doc="Rollouts per task.")
    rollout_timeout_s: float = chz.field(
        default=300.0, validator=greater_than(0), doc="A rollout running longer is cut (timeout)."
    )
    out: str | None = chz.field(default=None, doc="Also write every rollout's transcript row to this JSONL.")


@chz.chz
class EvaluateSettings(DryrunSettings):
    """Settings of `agl-tinker evaluate AGENT`."""

    n: int | None = chz.field(
        default=None, validator=at_least(1, optional=True), doc="Evaluate the first N tasks (None: all)."
    )
    temperature: float = chz.field(
        default=0.0, validator=at_least(0), doc="Sampling temperature (validation's default)."
    )


def _command(name: str, settings: type) -> Callable[[argparse.Namespace], Any]:
    def build(args: argparse.Namespace) -> Any:
        from agl_tinker.cli.command import Command

        return Command(f"agl-tinker {name}", settings, None)

    return build


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "dryrun": _command("dryrun", DryrunSettings),
    "evaluate": _command("evaluate", EvaluateSettings),
}
"""Subcommands that take ``key=value`` settings, and how each builds them."""


def _run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Any]:
    """The command's rollouts (transcript rows) and settings; a bad agent or task list is a usage error."""
    import asyncio

    from agl_tinker.cli.command import carried
    from agl_tinker.cli.settings import UsageError
    from agl_tinker.heavy_import import import_agentlightning
    from agl_tinker.viewer.dryrun import DryRun, dry_run, load_agent, load_task_list

    if not args.agent:
        raise UsageError(f"agl-tinker {args.command} needs the agent, as MODULE:FUNCTION")
    _, settings = COMMANDS[args.command](args).build(args, args.key_values)
    import_agentlightning()
    sys.path.insert(0, os.getcwd())  # MODULE:NAME of the user's own files, as `python -m` finds them
    try:
        agent = load_agent(args.agent)
        tasks = load_task_list(settings.tasks, n=settings.n, where=settings.where)
    except (ValueError, ImportError) as error:
        raise UsageError(str(error)) from error
    rows = asyncio.run(dry_run(agent, tasks, carried(DryRun, settings)))
    if settings.out:
        with open(settings.out, "w") as f:
            f.writelines(json.dumps(r, default=str) + "\n" for r in rows)
    return rows, settings


def _dryrun(args: argparse.Namespace) -> int:
    from agl_tinker.viewer.dryrun import score
    from agl_tinker.viewer.text import format_rollout

    rows, settings = _run(args)
    for row in rows:
        print(format_rollout(row))
    policy = settings.checkpoint or f"{settings.model_name} (base)"
    print(f"{len(rows)} rollouts against {policy}; " + score(rows).lines()[0])
    if settings.out:
        print(f"transcripts written to {settings.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from agl_tinker.viewer.dryrun import score

    rows, settings = _run(args)
    print(f"evaluated {settings.checkpoint or settings.model_name + ' (base)'} on {settings.tasks}")
    for line in score(rows).lines():
        print(line)
    if settings.out:
        print(f"transcripts written to {settings.out}")
    return 0


def _view(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from agl_tinker.cli.settings import UsageError
    from agl_tinker.viewer.server import serve

    if not os.path.isdir(args.log_path):
        raise UsageError(f"{args.log_path} is not a directory: give a run's log_path")

    def ready(url: str) -> None:
        print(f"agl-tinker view: {args.log_path} at {url} (Ctrl-C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the viewer is stopped
        asyncio.run(serve(args.log_path, args.host, args.port, ready))
    return 0


def add_parsers(sub: Any, common_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``dryrun``, ``evaluate`` and ``view`` to the CLI's subparsers."""
    view = sub.add_parser(
        "view",
        help="a local web page over a run's log path: curves, steps, rollouts, chat and token views",
        description="Serves LOG_PATH (finished or still training: the page refreshes itself) on "
        "127.0.0.1 and a free port, and prints the URL.",
    )
    view.add_argument("log_path", help="the run's log_path")
    view.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    view.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    view.set_defaults(func=_view)
    for name, func, about in (
        ("dryrun", _dryrun, "run any agent against the policy without training and print each rollout"),
        ("evaluate", _evaluate, "reward (mean, spread, per task) of any agent with a checkpoint's policy"),
    ):
        parser = sub.add_parser(
            name,
            add_help=False,
            help=about,
            description=f"{about[0].upper()}{about[1:]}. AGENT is MODULE:FUNCTION, the function passed "
            "to agl.rollout (or its result), e.g. agl_tinker.examples.quickstart:repeat_rollout. Settings "
            "as key=value; tasks= is required.",
        )
        common_flags(parser)
        parser.add_argument("agent", nargs="?", help="MODULE:FUNCTION of the agent")
        parser.set_defaults(func=func, subparser=parser)
