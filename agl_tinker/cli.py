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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agl-tinker", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    smoke = sub.add_parser("smoke", help="sample, fine-tune a few steps and sample again")
    smoke.add_argument("--model", default="Qwen/Qwen3-4B-Instruct-2507")
    smoke.add_argument("--steps", type=int, default=5)
    smoke.add_argument("--lr", type=float, default=5e-2)
    smoke.set_defaults(func=_smoke)

    hello = sub.add_parser(
        "hello",
        help="Hello 1024: train the agent to say it is a given identity",
        description="One-click by default (store, algorithm and runners in one command); "
        "'algo' and 'runner' run the split mode against a store started with `agl store`.",
    )
    hello.add_argument("mode", nargs="?", choices=["algo", "runner"], help="split-mode role")
    hello.add_argument("--ci", action="store_true", help="short configuration (finishes in under a minute)")
    hello.add_argument("--steps", type=int, help="training steps")
    hello.add_argument("--n-runners", type=int, help="runner processes (default 2)")
    hello.add_argument("--log-path", help="where metrics, checkpoints and the reward curve go (resumes)")
    hello.add_argument("--store", default="http://127.0.0.1:4747", help="store URL for split mode")
    hello.set_defaults(func=_hello)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
