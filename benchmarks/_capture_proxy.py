"""tinker-cookbook's capture proxy, armed as its ``serve.py`` wires it, for ``endpoint.py`` to compare with.

:func:`capture_proxy` serves ``tinker_cookbook.capture.proxy`` on a free 127.0.0.1 port from its own
thread, over the instant sampler ``endpoint.py`` gives the lean endpoint, with the cookbook's
recommended renderer for the model and its capture pipeline armed: SDK instrumentation (which patches
``SamplingClient.sample_async``), the exporter, and the store daemon (another process, whose CPU
:meth:`CaptureProxy.daemon_cpu_seconds` reads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CaptureProxy:
    """A serving capture proxy: its base URL (with ``/v1``), its exporter and its store daemon."""

    url: str
    exporter: Any
    daemon_pid: int | None

    def flush(self) -> None:
        """Wait until every call answered so far has left the exporter for the store daemon."""
        self.exporter.force_flush(timeout=30)

    def daemon_cpu_seconds(self) -> float:
        """The store daemon's user plus system CPU seconds so far (NaN when it cannot be read)."""
        return cpu_seconds(self.daemon_pid)


def _as_tinker_client(instant: Any) -> Any:
    """``instant`` (a sampler with an async ``sample``) as a ``tinker.SamplingClient`` subclass, so the
    capture proxy's SDK instrumentation (which patches ``SamplingClient.sample_async``) records its
    calls; ``sample``, which the SDK's ``sample_async`` delegates to, answers at once."""
    import tinker

    class InstantTinkerClient(tinker.SamplingClient):
        def sample(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return instant.sample(*args[:3])

    return object.__new__(InstantTinkerClient)


@contextlib.contextmanager
def _serve_app(app: Any) -> Iterator[str]:
    """Serve an aiohttp ``app`` on a free 127.0.0.1 port from its own thread; yields its base URL."""
    from aiohttp import web

    started: concurrent.futures.Future[str] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()

    async def open_site() -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set_result(f"http://127.0.0.1:{port}")
        return runner

    def serve() -> None:
        runner = loop.run_until_complete(open_site())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield started.result(timeout=60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


@contextlib.contextmanager
def capture_proxy(instant: Any, tokenizer: Any, model: str, data_dir: Path) -> Iterator[CaptureProxy]:
    """Serve the armed capture proxy over ``instant`` for ``model``; its store daemon keeps ``data_dir``.

    The instrumentation is removed, the exporter shut down and the daemon stopped on exit."""
    from tinker_cookbook.capture.exporter import CaptureExporter
    from tinker_cookbook.capture.instrument import instrument_tinker, uninstrument_tinker
    from tinker_cookbook.capture.proxy.app import ProxyDeps, make_app
    from tinker_cookbook.capture.store.client import StoreSink, ensure_daemon
    from tinker_cookbook.model_info import get_recommended_renderer_name
    from tinker_cookbook.renderers import get_renderer

    exporter = CaptureExporter(StoreSink(ensure_daemon(data_dir)))
    instrument_tinker(exporter)
    try:
        renderer = get_renderer(get_recommended_renderer_name(model), tokenizer, model_name=model)
        deps = ProxyDeps(renderer=renderer, sampling_client=_as_tinker_client(instant), model_label=model)
        with _serve_app(make_app(deps)) as url:
            yield CaptureProxy(url + "/v1", exporter, _daemon_pid(data_dir))
    finally:
        uninstrument_tinker()
        exporter.shutdown()
        _stop_store_daemon(data_dir)


def _daemon_pid(data_dir: Path) -> int | None:
    """The pid of the capture store daemon serving ``data_dir`` (from its ``daemon.json``), if any."""
    from tinker_cookbook.capture.store.daemon import DAEMON_INFO_FILENAME

    try:
        return int(json.loads((data_dir / DAEMON_INFO_FILENAME).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop_store_daemon(data_dir: Path) -> None:
    """End the capture store daemon this benchmark started."""
    pid = _daemon_pid(data_dir)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
