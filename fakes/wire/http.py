"""Answers in the shapes the SDK reads: a ``tinker.types`` model as JSON, ``{"detail": ...}``, and a
future's result (protobuf for ``SampleResponse`` / ``ForwardBackwardOutput``, JSON otherwise) or
failure."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import tinker
from aiohttp import web
from tinker import types

from .codec import PROTO_CONTENT_TYPE, encode_forward_backward_output, encode_sample_response


def _json(model: Any, status: int = 200) -> web.Response:
    if isinstance(model, pydantic.BaseModel):
        body = model.model_dump_json(exclude_none=False)
    else:
        body = json.dumps(model)
    return web.Response(status=status, body=body.encode(), content_type="application/json")


def _detail(status: int, message: str) -> web.Response:
    return _json({"detail": message}, status=status)


def failure(error: BaseException) -> dict[str, str]:
    """A failed future's answer (``RequestFailedResponse``): user errors are the caller's."""
    user = isinstance(error, (ValueError, TypeError, NotImplementedError)) or (
        isinstance(error, tinker.APIStatusError) and error.status_code < 500
    )
    message = error.message if isinstance(error, tinker.APIError) else str(error)
    return {"error": message or type(error).__name__, "category": "user" if user else "server"}


def result_response(value: Any) -> web.Response:
    if isinstance(value, types.SampleResponse):
        return web.Response(body=encode_sample_response(value), content_type=PROTO_CONTENT_TYPE)
    if isinstance(value, types.ForwardBackwardOutput):
        return web.Response(body=encode_forward_backward_output(value), content_type=PROTO_CONTENT_TYPE)
    return _json(value)
