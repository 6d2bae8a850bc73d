"""``agl-tinker view``: a local web page over a run's log path (aiohttp; charts by the vendored uPlot).

Routes (all JSON but the page and its static files)::

    GET /                         the page (static/index.html)
    GET /static/<file>            app.js, app.css, uPlot (package data: works offline, no CDN)
    GET /api/run                  log path, policies and their steps (and evaluations) with transcripts
    GET /api/metrics?since=N      metrics rows from row N on (the page polls it: a live run grows)
    GET /api/step/<step>?policy=&kind=    the step's rollouts, summaries only (kind=eval: validation)
    GET /api/rollout/<step>/<i>?policy=&kind=   one rollout's row, with its calls when it has them

The server binds 127.0.0.1 on a free port unless told otherwise.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from agl_tinker.viewer.layout import KINDS, POLICY_NAME
from agl_tinker.viewer.run_files import RunFiles

__all__ = ["make_app", "serve", "start"]

_STATIC = resources.files("agl_tinker.viewer") / "static"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


def make_app(log_path: str | Path) -> web.Application:
    """The viewer's application over ``log_path`` (a run's log directory)."""
    files = RunFiles(log_path)
    app = web.Application()

    async def page(request: web.Request) -> web.StreamResponse:
        return _static_response("index.html")

    async def static(request: web.Request) -> web.StreamResponse:
        return _static_response(request.match_info["name"])

    async def run(request: web.Request) -> web.Response:
        return web.json_response(
            {"log_path": str(files.path), "steps": files.steps(), "evals": files.steps("eval")}
        )

    async def metrics(request: web.Request) -> web.Response:
        since = _int(request.query.get("since", "0"), "since")
        rows = files.metrics()
        return web.json_response({"total": len(rows), "rows": rows[since:]})

    async def step(request: web.Request) -> web.Response:
        number = _int(request.match_info["step"], "step")
        return web.json_response(files.summaries(number, _policy(request), _kind(request)))

    async def rollout(request: web.Request) -> web.Response:
        row = files.rollout(
            _int(request.match_info["step"], "step"),
            _int(request.match_info["index"], "index"),
            _policy(request),
            _kind(request),
        )
        if row is None:
            raise web.HTTPNotFound(text="no such rollout")
        return web.json_response(row)

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/run", run)
    app.router.add_get("/api/metrics", metrics)
    app.router.add_get("/api/step/{step}", step)
    app.router.add_get("/api/rollout/{step}/{index}", rollout)
    return app


def _static_response(name: str) -> web.Response:
    if "/" in name or name.startswith(".") or Path(name).suffix not in _TYPES:
        raise web.HTTPNotFound()
    resource = _STATIC / name
    if not resource.is_file():
        raise web.HTTPNotFound()
    return web.Response(
        body=resource.read_bytes(),
        content_type=_TYPES[Path(name).suffix],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer, got {text!r}") from None


def _kind(request: web.Request) -> str:
    kind = request.query.get("kind", "step")
    if kind not in KINDS:
        raise web.HTTPBadRequest(text=f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _policy(request: web.Request) -> str:
    policy = request.query.get("policy", "")
    if policy and not re.fullmatch(POLICY_NAME, policy):  # the reader's rule (else its ValueError: a 500)
        raise web.HTTPBadRequest(text=f"bad policy name {policy!r}")
    return policy


async def start(log_path: str | Path, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the viewer; returns its runner (``await runner.cleanup()`` stops it) and its URL."""
    runner = web.AppRunner(make_app(log_path), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}/"


async def serve(
    log_path: str | Path, host: str = "127.0.0.1", port: int = 0, ready: Callable[[str], Any] | None = None
) -> None:
    """Serve until cancelled (Ctrl-C); ``ready(url)`` is called once it listens."""
    runner, url = await start(log_path, host, port)
    try:
        if ready is not None:
            ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
