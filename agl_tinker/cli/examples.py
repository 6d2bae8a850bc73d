"""The example commands: ``agl-tinker hello`` (one-click, split-mode roles) and ``agl-tinker q20``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from agl_tinker.cli.example_settings import hello_command, q20_command
from agl_tinker.cli.running import train_until_stopped
from agl_tinker.heavy_import import import_agentlightning

__all__ = ["hello", "message_text", "q20"]


def _ray_strategy(own: Any) -> Any:
    """The Ray runner strategy ``runners=ray`` asks for, or ``None`` (runner processes)."""
    if getattr(own, "runners", None) != "ray":
        return None
    from agl_tinker.cli.command import carried
    from agl_tinker.runners.ray_cluster import RayRunnerSettings
    from agl_tinker.runners.ray_runners import RayRunnerStrategy

    settings = carried(RayRunnerSettings, own, address="ray_address", num_cpus="runner_cpus")
    return RayRunnerStrategy(settings, server_host=own.store_host)


def hello(args: argparse.Namespace) -> int:
    config, own = hello_command(args).build(args, args.key_values)
    import_agentlightning()  # only once the settings are known to be usable
    if args.mode in ("algo", "runner"):
        from agl_tinker.run.reach import check_store

        check_store(own.store)  # within seconds, one line naming the URL
    if config is None:
        from agl_tinker.examples.hello.train import run_runners

        label = "Hello 1024 runners"
        processes = f"{own.n_runners} runner process{'es' if own.n_runners != 1 else ''}"
        print(f"{label}: connected to the store at {own.store}; {processes}", flush=True)
        verbose = bool(getattr(args, "verbose", False))
        stopped = run_runners(own.store, own.n_runners, every=own.report_every, verbose=verbose)
        print(stopped.line(label), flush=True)
        return stopped.exit_code
    from agl_tinker.examples.hello.train import print_summary, run_algo, run_one_click

    print(f"Hello 1024 ({args.mode or 'one-click'}), logging to {config.log_path}", flush=True)
    if args.mode == "algo":
        result = train_until_stopped(
            args, config, lambda on_step: run_algo(config, own.store, on_step=on_step)
        )
    else:
        strategy = _ray_strategy(own)
        result = train_until_stopped(
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
                print(f"  {m['role']:>9}: {message_text(m)[:140]}")


def message_text(message: Mapping[str, Any]) -> str:
    text = str(message.get("content") or "").replace("\n", " ").strip()
    calls = [
        f"[calls {c['function']['name']}({c['function']['arguments']})]"
        for c in message.get("tool_calls") or []
    ]
    if message.get("role") == "tool":
        text = f"[{message.get('name') or 'tool'} result] {text}"
    return " ".join([text, *calls] if text else calls)


def q20(args: argparse.Namespace) -> int:
    import asyncio

    config, own = q20_command(args).build(args, args.key_values)
    import_agentlightning()  # only once the settings are known to be usable
    from agl_tinker.examples.q20 import train as q20_train

    if args.mode == "dryrun":
        summary = asyncio.run(q20_train.run_dryrun(own.games, own.out))
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
        summary = asyncio.run(q20_train.run_evaluate_offline(own.split, own.out, own.limit))
        print(summary.table())
        print(f"games written to {own.out}")
        return 0
    print(f"20 Questions training, logging to {config.log_path}", flush=True)
    result = train_until_stopped(
        args,
        config,
        lambda on_step: q20_train.run_train(config, own.n_runners, on_step=on_step, ci=args.ci),
    )
    q20_train.print_train_summary(result)
    return 0
