"""The ``agl-tinker`` console script."""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agl-tinker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    smoke = sub.add_parser(
        "smoke", help="sample, fine-tune a few steps and sample again (simulator by default)"
    )
    smoke.add_argument("--model", default="Qwen/Qwen3-4B-Instruct-2507")
    smoke.add_argument("--steps", type=int, default=5)
    smoke.add_argument("--lr", type=float, default=5e-2)
    smoke.set_defaults(func=_smoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
