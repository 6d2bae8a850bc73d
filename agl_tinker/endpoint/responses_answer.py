"""A :class:`~agl_tinker.endpoint.generation.Generation` as a Responses API answer: JSON and SSE.

Output items: one ``message`` (``output_text``) when the policy wrote text or no tool call, then one
``function_call`` per parsed tool call (``call_id`` is the call's id, which a later
``function_call_output`` names). An answer cut for length is ``status: "incomplete"`` with
``incomplete_details.reason = "max_output_tokens"`` (stream: ``response.incomplete``). Like chat
completions, the body carries the token extras: ``prompt_token_ids``, ``token_ids``,
``token_logprobs``, ``weights_version``.

The stream is the finished answer as events (the sampler returns whole sequences): ``response.created``,
``response.in_progress``, per item ``response.output_item.added`` .. its deltas ..
``response.output_item.done``, then ``response.completed`` with usage.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from agl_tinker.endpoint.generation import Generation
from agl_tinker.endpoint.responses_request import ResponsesCall


def _output_items(generation: Generation) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if generation.text or not generation.tool_calls:
        items.append(
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": generation.text, "annotations": [], "logprobs": []}
                ],
            }
        )
    for call in generation.tool_calls:
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{uuid.uuid4().hex}",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
        )
    return items


def response_dict(generation: Generation, model: str, call: ResponsesCall) -> dict[str, Any]:
    """The ``response`` object of a non-streaming answer (and of the stream's last event)."""
    incomplete = generation.finish_reason == "length"
    prompt_tokens, output_tokens = len(generation.prompt_token_ids), len(generation.response_token_ids)
    return {
        "id": "resp_" + generation.response_id.removeprefix("chatcmpl-"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": model,
        "instructions": call.instructions,
        "output": _output_items(generation),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "user": None,
        **call.echo,
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens,
        },
        "prompt_token_ids": generation.prompt_token_ids,
        "token_ids": generation.response_token_ids,
        "token_logprobs": generation.logprobs,
        "weights_version": generation.weights_version,
    }


def _item_events(index: int, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The events of one output item, from ``output_item.added`` to ``output_item.done``."""
    item_id = item["id"]
    if item["type"] == "message":
        yield {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "status": "in_progress", "content": []},
        }
        part = item["content"][0]
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        yield {"type": "response.content_part.added", **where, "part": {**part, "text": ""}}
        yield {"type": "response.output_text.delta", **where, "delta": part["text"], "logprobs": []}
        yield {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []}
        yield {"type": "response.content_part.done", **where, "part": part}
    else:
        yield {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "status": "in_progress", "arguments": ""},
        }
        where = {"item_id": item_id, "output_index": index}
        yield {"type": "response.function_call_arguments.delta", **where, "delta": item["arguments"]}
        yield {
            "type": "response.function_call_arguments.done",
            **where,
            "name": item["name"],
            "arguments": item["arguments"],
        }
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def response_events(response: dict[str, Any]) -> Iterator[bytes]:
    """The finished ``response`` (:func:`response_dict`) as Responses SSE events, numbered in order."""
    started = {**response, "status": "in_progress", "incomplete_details": None, "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(response["output"]):
        events.extend(_item_events(index, item))
    last = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    events.append({"type": last, "response": response})
    for number, event in enumerate(events):
        payload = json.dumps({**event, "sequence_number": number})
        yield f"event: {event['type']}\ndata: {payload}\n\n".encode()
