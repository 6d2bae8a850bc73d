"""Running a ``WireServer``: on a daemon thread for tests, or in the foreground for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from fakes.tinker import SimConfig

from .faults import WireFaults
from .memory import map_large_blocks
from .server import WireServer


class RunningWireServer:
    """A ``WireServer`` serving from a daemon thread with its own event loop (for tests)."""

    def __init__(self, server: WireServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tinker-wire-sim", daemon=True)
        self._thread.start()
        self.url: str = asyncio.run_coroutine_threadsafe(server.start(host, port), self._loop).result(30)

    def close(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_in_thread(
    sim_config: SimConfig | None = None,
    faults: WireFaults | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    **kwargs: Any,
) -> RunningWireServer:
    """Start a wire simulator on a free loopback port; ``.url`` is its ``TINKER_BASE_URL``."""
    return RunningWireServer(WireServer(sim_config, faults, **kwargs), host, port)


async def serve_forever(host: str, port: int, on_ready: Callable[[str], None], **kwargs: Any) -> None:
    """Serve in the foreground until cancelled (``agl-tinker sim-server``); the process is the
    server's own, so its large blocks are mapped (see :func:`fakes.wire.memory.map_large_blocks`)."""
    map_large_blocks()
    server = WireServer(**kwargs)
    on_ready(await server.start(host, port))
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
