"""The ``agl-tinker`` console script: the examples, offline by default (``AGL_TINKER_BACKEND=live`` for Tinker)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


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

    from agl_tinker.store_server import serve_store

    print(f"agl-tinker store: serving at http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a store is stopped
        asyncio.run(serve_store(args.host, args.port, args.cors_origins))
    return 0


def _hello_settings(args: argparse.Namespace) -> object:
    from examples.hello.train import HelloSettings, default_log_path

    log_path = args.log_path or default_log_path()
    settings = HelloSettings.ci(log_path) if args.ci else HelloSettings(log_path=log_path)
    overrides = {k: getattr(args, k) for k in ("steps", "n_runners") if getattr(args, k, None) is not None}
    return HelloSettings(**{**settings.__dict__, **overrides})


def _hello(args: argparse.Namespace) -> int:
    from examples.hello.train import print_summary, run_algo, run_one_click, run_runners

    mode = args.mode or "one-click"
    if mode == "runner":
        run_runners(args.store, args.n_runners or 2)
        return 0
    settings = _hello_settings(args)
    print(f"Hello 1024 ({mode}), logging to {settings.log_path}", flush=True)  # type: ignore[attr-defined]
    result = run_algo(settings, args.store) if mode == "algo" else run_one_click(settings)  # type: ignore[arg-type]
    print_summary(result)
    return 0


def _print_transcripts(path: str) -> None:
    import json

    with open(path) as f:
        for line in f:
            game = json.loads(line)
            print(
                f"--- {game.get('category')}: {game.get('answer')} (won={game.get('won')}, turns={game.get('turns')})"
            )
            for m in game.get("messages", [])[1:]:
                text = m.get("content") or ""
                calls = [
                    c["function"]["name"] + c["function"]["arguments"] for c in m.get("tool_calls") or []
                ]
                print(f"  {m['role']:>9}: {(text or ' '.join(calls))[:110]}")


def _q20(args: argparse.Namespace) -> int:
    import asyncio

    from examples.q20 import train as q20

    if args.mode == "dryrun":
        out = args.out or "q20_dryrun.jsonl"
        summary = asyncio.run(q20.run_dryrun(args.games, out))
        _print_transcripts(out)
        print(summary.table())
        return 0
    if args.mode == "evaluate":
        if args.base_url:
            from examples.q20.evaluate import main as evaluate_main

            argv = ["--base-url", args.base_url, "--model", args.model, "--split", args.split]
            argv += ["--out", args.out or "q20_eval.jsonl"]
            argv += ["--limit", str(args.limit)] if args.limit else []
            return evaluate_main(argv)
        out = args.out or "q20_eval.jsonl"
        summary = asyncio.run(q20.run_evaluate_offline(args.split, out, args.limit))
        print(summary.table())
        print(f"games written to {out}")
        return 0
    log_path = args.log_path or q20.default_log_path()
    settings = q20.Q20Settings.ci(log_path) if args.ci else q20.Q20Settings(log_path=log_path)
    if args.steps is not None:
        settings = q20.Q20Settings(**{**settings.__dict__, "steps": args.steps})
    print(f"20 Questions training, logging to {log_path}", flush=True)
    q20.print_train_summary(q20.run_train(settings))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agl-tinker", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
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
    store.add_argument("--port", type=int, default=4747)
    store.add_argument(
        "--cors-origin", dest="cors_origins", action="append", help="allowed CORS origin (repeatable)"
    )
    store.set_defaults(func=_store)

    hello = sub.add_parser(
        "hello",
        help="Hello 1024: train the agent to say it is a given identity",
        description="One-click by default (store, algorithm and runners in one command); "
        "'algo' and 'runner' run the split mode against a store started with `agl-tinker store` (or `agl store`).",
    )
    hello.add_argument("mode", nargs="?", choices=["algo", "runner"], help="split-mode role")
    hello.add_argument("--ci", action="store_true", help="short configuration (finishes in under a minute)")
    hello.add_argument("--steps", type=int, help="training steps")
    hello.add_argument("--n-runners", type=int, help="runner processes (default 2)")
    hello.add_argument("--log-path", help="where metrics, checkpoints and the reward curve go (resumes)")
    hello.add_argument("--store", default="http://127.0.0.1:4747", help="store URL for split mode")
    hello.set_defaults(func=_hello)

    q20 = sub.add_parser(
        "q20",
        help="20 Questions with a search tool: dryrun, train, evaluate",
        description="dryrun plays a few games against the untrained policy and prints them; train runs "
        "one-click training; evaluate scores the base model offline, or any OpenAI-compatible model "
        "with --base-url.",
    )
    q20.add_argument("mode", choices=["dryrun", "train", "evaluate"])
    q20.add_argument("--games", type=int, default=4, help="dryrun: games to play")
    q20.add_argument("--ci", action="store_true", help="train: a short configuration")
    q20.add_argument("--steps", type=int, help="train: training steps")
    q20.add_argument("--log-path", help="train: where metrics and checkpoints go (resumes)")
    q20.add_argument(
        "--base-url", help="evaluate: an OpenAI-compatible /v1 URL (default: the offline base model)"
    )
    q20.add_argument("--model", default="Qwen/Qwen3-4B-Instruct-2507", help="evaluate: model name")
    q20.add_argument("--split", default="val", choices=["train", "val", "all"])
    q20.add_argument("--limit", type=int, help="evaluate: play only the first N tasks")
    q20.add_argument("--out", help="JSONL file for the games")
    q20.set_defaults(func=_q20)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except Exception as exc:
        from agl_tinker.train import RUN_ERRORS

        if not isinstance(exc, RUN_ERRORS):
            raise
        print(f"agl-tinker: error: {exc}", file=sys.stderr)  # the run's own reason; no traceback
        return 1


if __name__ == "__main__":
    sys.exit(main())
