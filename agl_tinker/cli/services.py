"""The commands that serve or try something and take no ``key=value`` settings: smoke, store, sim-server."""

from __future__ import annotations

import argparse
import logging

from agl_tinker.heavy_import import import_agentlightning

__all__ = ["sim_server", "smoke", "store"]


def smoke(args: argparse.Namespace) -> int:
    from agl_tinker.smoke import run_smoke

    result = run_smoke(model=args.model, steps=args.steps, learning_rate=args.lr)
    print(f"before training: {result.before!r}")
    for step, loss in enumerate(result.losses):
        print(f"step {step}: cross-entropy loss {loss:.4f}")
    print(f"after training:  {result.after!r}")
    print(f"done in {result.seconds:.1f}s")
    return 0


def store(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    import_agentlightning()
    from agl_tinker.cli.settings import UsageError
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


def sim_server(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from fakes.wire import serve_forever

    def ready(url: str) -> None:
        print(f"agl-tinker sim-server: Tinker simulator at {url}", flush=True)
        print(f"  export AGL_TINKER_BACKEND=live TINKER_BASE_URL={url} TINKER_API_KEY=tml-local", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the server is stopped
        asyncio.run(serve_forever(args.host, args.port, ready))
    return 0
