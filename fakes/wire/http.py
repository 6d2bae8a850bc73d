"""JSON answers in the shapes the SDK reads: a ``tinker.types`` model, or ``{"detail": ...}``."""

from __future__ import annotations

import json
from typing import Any

import pydantic
from aiohttp import web


def _json(model: Any, status: int = 200) -> web.Response:
    if isinstance(model, pydantic.BaseModel):
        body = model.model_dump_json(exclude_none=False)
    else:
        body = json.dumps(model)
    return web.Response(status=status, body=body.encode(), content_type="application/json")


def _detail(status: int, message: str) -> web.Response:
    return _json({"detail": message}, status=status)
