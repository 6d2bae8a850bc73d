"""An OpenAI chat-completions request, validated once into renderer messages and sampling settings.

Validation reuses tinker-cookbook's capture proxy (message/tool parsing and its field checks) so the
lean server and the LLMProxy compatibility mode reject exactly the same inputs with the same
messages; this module adds what that proxy does not check (ranges, ``logprobs``, context limit).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tinker_cookbook.capture.proxy.app import (
    _parse_openai,
    _validated_max_tokens,
    _validated_number,
    _validated_optional_int,
    _validated_stop_strings,
)
from tinker_cookbook.renderers import Message, Renderer, ToolSpec

from agl_tinker.endpoint.conversation import BadRequest, Conversation, prompt_messages

MAX_STOP_SEQUENCES = 4
NESTED_TOO_DEEPLY = "request body is nested too deeply to decode"
"""The 400 for a body whose JSON nests past Python's recursion limit (``json.loads`` recurses)."""
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling knobs a request may set; ``None`` means the sampler's default."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request, ready to render."""

    messages: list[Message]
    """Conversation in renderer form, tool/system prefix already prepended."""
    tool_specs: list[ToolSpec]
    suppress_tool_calls: bool
    sampling: SamplingSettings
    logprobs: bool = False
    stream: bool = False
    include_usage: bool = False


def _check_range(name: str, value: float | None, low: float, high: float, *, low_open: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise BadRequest(f"{name!r} must be in {bracket}{low}, {high}]")


def sampling_settings(
    body: dict[str, Any],
    default_max_tokens: int,
    *,
    max_keys: tuple[str, ...] = ("max_completion_tokens", "max_tokens"),
    stop_key: str | None = "stop",
) -> SamplingSettings:
    """The sampling knobs of a request body, validated (ranges included); raises ``BadRequest``.

    ``max_keys``: the budget's field names, first present wins (each API names it differently);
    ``stop_key``: the client stop strings' field name (``None``: the API has none).
    """
    raw_max: object = None
    key = max_keys[0]
    for key in max_keys:
        raw_max = body.get(key)
        if raw_max is not None:
            break
    temperature = _validated_number(body, "temperature")
    top_p = _validated_number(body, "top_p")
    _check_range("temperature", temperature, 0.0, 2.0)
    _check_range("top_p", top_p, 0.0, 1.0, low_open=True)
    top_k = _validated_optional_int(body, "top_k")
    if top_k is not None and top_k != -1 and top_k < 1:
        raise BadRequest("'top_k' must be a positive integer, or -1 for no limit")
    stop = None if stop_key is None else _validated_stop_strings(body.get(stop_key), stop_key)
    if stop is not None:
        if len(stop) > MAX_STOP_SEQUENCES:
            raise BadRequest(f"{stop_key!r} allows at most {MAX_STOP_SEQUENCES} sequences")
        if any(not s for s in stop):
            raise BadRequest(f"{stop_key!r} sequences must be non-empty strings")
    seed = _validated_optional_int(body, "seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise BadRequest(f"'seed' must be a non-negative integer up to {MAX_SEED}")
    return SamplingSettings(
        max_tokens=_validated_max_tokens(raw_max, key, default_max_tokens),
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop or None,
    )


def _check_tool_call_arguments(messages: object) -> None:
    """History tool calls carry their arguments as a JSON object in a string (OpenAI's format);
    the renderer would otherwise fail on them mid-request. Other shapes are the cookbook's."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not isinstance(calls, list):
            continue
        for j, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or function.get("arguments") in (None, ""):
                continue
            arguments = function["arguments"]
            try:
                valid = isinstance(arguments, str) and isinstance(json.loads(arguments), dict)
            except (ValueError, RecursionError):
                valid = False
            if not valid:
                raise BadRequest(
                    f"'messages[{i}].tool_calls[{j}].function.arguments' must be a string holding a JSON object"
                )


def _logprobs_requested(body: dict[str, Any]) -> bool:
    value = body.get("logprobs")
    if value is not None and not isinstance(value, bool):
        raise BadRequest("'logprobs' must be a boolean")
    top = body.get("top_logprobs")
    if top not in (None, 0):
        raise BadRequest(
            "'top_logprobs' is not supported; the sampler returns the chosen token's logprob only"
        )
    return bool(value)


def stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object")
    return bool(stream), bool(options and options.get("include_usage"))


_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "response_format": (dict, "an object"),
    "metadata": (dict, "an object"),
    "user": (str, "a string"),
}
"""Optional OpenAI fields the endpoint does not act on, with the type OpenAI gives them: a value
of another type is a 400 here (LiteLLM's proxy fails with a 500 on some, e.g. a list
``response_format``)."""


def _check_field_types(body: dict[str, Any]) -> None:
    for name, (kind, description) in _FIELD_TYPES.items():
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise BadRequest(f"'{name}' must be {description}")


def parse_chat_request(body: dict[str, Any], renderer: Renderer, *, default_max_tokens: int) -> ChatRequest:
    """Validate an OpenAI chat-completions body and turn it into renderer messages.

    Raises ``BadRequest`` with a message saying which field is wrong.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    _check_field_types(body)
    logprobs = _logprobs_requested(body)
    stream, include_usage = stream_flags(body)
    _check_tool_call_arguments(body.get("messages"))
    # The cookbook parser rejects logprobs outright (its proxy cannot return them); this endpoint can.
    parsed = _parse_openai({k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")})
    return chat_request(
        parsed,
        renderer,
        sampling_settings(body, default_max_tokens),
        logprobs=logprobs,
        stream=stream,
        include_usage=include_usage,
    )


def chat_request(
    conversation: Conversation,
    renderer: Renderer,
    sampling: SamplingSettings,
    *,
    logprobs: bool = False,
    stream: bool = False,
    include_usage: bool = False,
) -> ChatRequest:
    """The request to sample for ``conversation`` (any API's), rendered messages prefixed."""
    return ChatRequest(
        messages=prompt_messages(conversation, renderer),
        tool_specs=conversation.tool_specs,
        suppress_tool_calls=conversation.suppress_tool_calls,
        sampling=sampling,
        logprobs=logprobs,
        stream=stream,
        include_usage=include_usage,
    )
