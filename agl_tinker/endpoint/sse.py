"""Chat completions as OpenAI SSE chunks (``stream: true``), from the finished answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def chat_chunks(completion: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """The finished completion as OpenAI ``chat.completion.chunk`` events, ending with ``[DONE]``.

    The last chunk also carries the token extras (``token_ids``, ``prompt_token_ids``) so a client
    reading the stream sees the same ids a non-streaming answer has.
    """
    choice = completion["choices"][0]
    message = choice["message"]
    base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    if message.get("content"):
        deltas.append({"content": message["content"]})
    if message.get("tool_calls"):
        deltas.append({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]})
    for delta in deltas:
        yield event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **usage_field})
    last_choice = {
        "index": 0,
        "delta": {},
        "finish_reason": choice["finish_reason"],
        "logprobs": choice.get("logprobs"),
        "token_ids": choice.get("token_ids"),
        "token_logprobs": choice.get("token_logprobs"),
    }
    extras: dict[str, Any] = {
        k: completion[k] for k in ("prompt_token_ids", "weights_version") if k in completion
    }
    yield event({**base, "choices": [last_choice], **usage_field, **extras})
    if include_usage:
        yield event({**base, "choices": [], "usage": completion["usage"]})
    yield b"data: [DONE]\n\n"
