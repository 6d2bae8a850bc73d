"""A :class:`~agl_tinker.endpoint.generation.Generation` as an Anthropic Messages answer: JSON, SSE, errors.

Content: a ``text`` block when the policy wrote text or no tool call, then a ``tool_use`` block per
parsed call (``id`` is the call's id; ``input`` the parsed arguments, or ``{"_raw_arguments": ...}``
when they are not a JSON object, as the cookbook's proxy does). ``stop_reason``: ``tool_use``,
``max_tokens`` (cut for length), ``stop_sequence`` (a client stop string, named in
``stop_sequence``) or ``end_turn``. The body carries the token extras (``prompt_token_ids``,
``token_ids``, ``token_logprobs``, ``weights_version``). The stream is the finished answer as
``message_start``, per block ``content_block_start``/``content_block_delta``/``content_block_stop``,
``message_delta`` (stop reason, usage), ``message_stop``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from agl_tinker.endpoint.generation import Generation


def anthropic_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    """An Anthropic-shaped error body (the ``anthropic`` client reads ``error.message``)."""
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}


def _stop_reason(generation: Generation) -> str:
    if generation.tool_calls:
        return "tool_use"
    if generation.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if generation.stop_sequence is not None else "end_turn"


def message_dict(generation: Generation, model: str) -> dict[str, Any]:
    """The ``message`` body of a non-streaming answer."""
    blocks: list[dict[str, Any]] = []
    if generation.text or not generation.tool_calls:
        blocks.append({"type": "text", "text": generation.text})
    for call in generation.tool_calls:
        function = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _tool_input(function["arguments"]),
            }
        )
    return {
        "id": "msg_" + generation.response_id.removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": _stop_reason(generation),
        "stop_sequence": generation.stop_sequence,
        "usage": {
            "input_tokens": len(generation.prompt_token_ids),
            "output_tokens": len(generation.response_token_ids),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
        "prompt_token_ids": generation.prompt_token_ids,
        "token_ids": generation.response_token_ids,
        "token_logprobs": generation.logprobs,
        "weights_version": generation.weights_version,
    }


_TOKEN_EXTRAS = ("prompt_token_ids", "token_ids", "token_logprobs", "weights_version")


def message_events(message: dict[str, Any]) -> Iterator[bytes]:
    """The finished ``message`` (:func:`message_dict`) as Messages SSE events; the token extras
    ride on ``message_delta``."""

    def event(payload: dict[str, Any]) -> bytes:
        return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()

    usage = message["usage"]
    extras = {k: message[k] for k in _TOKEN_EXTRAS}
    start = {k: v for k, v in message.items() if k not in _TOKEN_EXTRAS}
    start |= {
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    yield event({"type": "message_start", "message": start})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opened: dict[str, Any] = {"type": "text", "text": ""}
            delta: dict[str, Any] = {"type": "text_delta", "text": block["text"]}
        else:
            opened = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        yield event({"type": "content_block_start", "index": index, "content_block": opened})
        yield event({"type": "content_block_delta", "index": index, "delta": delta})
        yield event({"type": "content_block_stop", "index": index})
    yield event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
            "usage": {"output_tokens": usage["output_tokens"]},
            **extras,
        }
    )
    yield event({"type": "message_stop"})
