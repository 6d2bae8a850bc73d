"""An OpenAI Responses API request (``POST /v1/responses``), parsed into the one conversation model.

Honoured: ``instructions``; ``input`` as a string or a list of items: messages of every role
(``system``/``developer`` ones before the conversation become the system text, later ones stay
system turns), content as a string or ``input_text``/``output_text``/``text``/``refusal`` parts;
``function_call`` items (joined to the assistant message just before them, so an answer the endpoint
gave comes back as the same message) and ``function_call_output`` items (matched by ``call_id``);
``function`` tools (``strict`` or not); ``tool_choice`` ``auto``/``none``; ``max_output_tokens``,
``temperature``, ``top_p``, ``stream``.

Accepted and ignored (no meaning for a Tinker policy): ``store``, ``include``, ``prompt_cache_key``,
``client_metadata``, ``metadata``, ``parallel_tool_calls``, ``reasoning``, ``user``,
``safety_identifier``, ``service_tier``, ``truncation``, ``text`` with the plain text format,
``stream_options``, ``background: false``; ``reasoning`` input items (renderers drop past reasoning;
token-in-token-out reuses the sampled tokens of the endpoint's own turns, reasoning included).
Tools the policy cannot call (``web_search``, ``namespace``, hosted and custom tools) are ignored and
counted (:attr:`ResponsesCall.ignored_tools`). ``previous_response_id`` is refused with a 400: the
endpoint keeps no record of responses, and every harness tried resends the full history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tinker_cookbook.capture.proxy.app import _check_tool_choice, _tool_choice_is_none
from tinker_cookbook.renderers import Message, ToolCall, ToolSpec

from agl_tinker.endpoint.chat_request import ChatRequest, chat_request, sampling_settings
from agl_tinker.endpoint.conversation import BadRequest, Conversation, tool_call, tool_spec
from agl_tinker.endpoint.provider import TinkerChatProvider

_SYSTEM_ROLES = frozenset({"system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})
_REFUSED = {
    "previous_response_id": "'previous_response_id' is not supported: this endpoint keeps no record of "
    "responses; send the full conversation in 'input' (store: false)",
    "conversation": "'conversation' is not supported: send the full conversation in 'input'",
    "prompt": "'prompt' (stored prompt templates) is not supported: send 'instructions' and 'input'",
}


@dataclass(frozen=True)
class ResponsesCall:
    """A parsed Responses request: what to sample, and what the answer and the span echo."""

    request: ChatRequest
    conversation: Conversation
    ignored_tools: int
    """Tools declared that the policy cannot call (hosted, ``namespace``, custom), not rendered."""
    instructions: str | None
    echo: dict[str, Any]
    """Request fields a Responses answer reports back (``tool_choice``, ``tools``, ``temperature``...)."""


def _text(content: object, where: str) -> str:
    """A message's content as text: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"'{where}.content' must be a string or a list of content parts")
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in _TEXT_PARTS:
            raise BadRequest(
                f"'{where}.content[{j}]' of type {kind!r} is not supported: only text parts "
                "(input_text, output_text) are (no images or files)"
            )
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"'{where}.content[{j}]' needs a string text")
        texts.append(text)
    return "".join(texts)


def _string_field(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{where}.{key}' must be a non-empty string")
    return value


class _Items:
    """Builds the conversation item by item (the order the client sent)."""

    def __init__(self, instructions: str | None) -> None:
        self.system: list[str] = [instructions] if instructions else []
        self.messages: list[Message] = []
        self.tool_names: dict[str, str] = {}

    def message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        text = _text(item.get("content"), where)
        if not isinstance(role, str):
            raise BadRequest(f"'{where}.role' must be user, assistant, system or developer")
        if role in _SYSTEM_ROLES:
            if self.messages:
                self.messages.append(Message(role="system", content=text))
            else:
                self.system.append(text)
        elif role in ("user", "assistant"):
            self.messages.append(Message(role=role, content=text))
        else:
            raise BadRequest(f"'{where}.role' must be user, assistant, system or developer")

    def function_call(self, item: dict[str, Any], where: str) -> None:
        call_id = _string_field(item, "call_id", where)
        name = _string_field(item, "name", where)
        arguments = item.get("arguments")
        if not isinstance(arguments, str):
            raise BadRequest(f"'{where}.arguments' must be a string")
        call: ToolCall = tool_call(call_id, name, arguments)
        self.tool_names[call_id] = name
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            last["tool_calls"] = [*(last.get("tool_calls") or []), call]
        else:
            self.messages.append(Message(role="assistant", content="", tool_calls=[call]))

    def function_call_output(self, item: dict[str, Any], where: str) -> None:
        call_id = _string_field(item, "call_id", where)
        output = item.get("output")
        text = output if isinstance(output, str) else _text(output, where + ".output")
        result = Message(role="tool", content=text, tool_call_id=call_id)
        if call_id in self.tool_names:
            result["name"] = self.tool_names[call_id]  # renderers that render results by name
        self.messages.append(result)


def _conversation(body: dict[str, Any], tool_specs: list[ToolSpec], suppress: bool) -> Conversation:
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("'instructions' must be a string")
    raw = body.get("input")
    items = _Items(instructions)
    if isinstance(raw, str):
        items.messages.append(Message(role="user", content=raw))
    elif isinstance(raw, list) and raw:
        for i, item in enumerate(raw):
            where = f"input[{i}]"
            if not isinstance(item, dict):
                raise BadRequest(f"'{where}' must be an object")
            kind = item.get("type", "message")
            if kind == "message":
                items.message(item, where)
            elif kind == "function_call":
                items.function_call(item, where)
            elif kind == "function_call_output":
                items.function_call_output(item, where)
            elif kind != "reasoning":
                raise BadRequest(
                    f"'{where}' of type {kind!r} is not supported: only message, function_call, "
                    "function_call_output and reasoning items are"
                )
    else:
        raise BadRequest("'input' must be a string or a non-empty list of items")
    if not items.messages:
        raise BadRequest("'input' holds no conversation: add a user message")
    return Conversation(
        messages=items.messages,
        system_text="\n\n".join(items.system) if items.system else None,
        tool_specs=tool_specs,
        suppress_tool_calls=suppress,
    )


def _tools(body: dict[str, Any]) -> tuple[list[ToolSpec], int]:
    raw = body.get("tools")
    if raw is None:
        return [], 0
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise BadRequest("'tools' must be a list of tool objects")
    specs = [
        tool_spec(entry.get("name"), entry.get("description"), entry.get("parameters"))
        for entry in raw
        if entry.get("type") == "function"
    ]
    return specs, len(raw) - len(specs)


def _check_fields(body: dict[str, Any]) -> None:
    for key, message in _REFUSED.items():
        if body.get(key):
            raise BadRequest(message)
    if body.get("background"):
        raise BadRequest("'background' responses are not supported; leave it false")
    text = body.get("text")
    if text is not None:
        fmt = text.get("format") if isinstance(text, dict) else None
        if not isinstance(text, dict) or (fmt is not None and not isinstance(fmt, dict)):
            raise BadRequest("'text' must be an object whose 'format' is an object")
        if fmt is not None and fmt.get("type", "text") != "text":
            raise BadRequest("structured output ('text.format' other than text) is not supported")
    if body.get("top_logprobs"):
        raise BadRequest(
            "'top_logprobs' is not supported; the sampler returns the chosen token's logprob only"
        )
    for key in ("metadata", "reasoning", "client_metadata"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise BadRequest(f"'{key}' must be an object")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")


def parse_responses_request(body: dict[str, Any], provider: TinkerChatProvider) -> ResponsesCall:
    """Validate a Responses body against ``provider``'s renderer; raises ``BadRequest`` naming the field."""
    _check_fields(body)
    choice = body.get("tool_choice")
    if choice == "required" or (isinstance(choice, dict) and choice.get("type") not in ("auto", "none")):
        raise BadRequest("forced 'tool_choice' is not supported; omit it or use auto/none")
    _check_tool_choice(choice)
    suppress = _tool_choice_is_none(choice)
    specs, ignored = _tools(body)
    conversation = _conversation(body, [] if suppress else specs, suppress)
    sampling = sampling_settings(
        body, provider.default_max_tokens, max_keys=("max_output_tokens",), stop_key=None
    )
    request = chat_request(conversation, provider.renderer, sampling, stream=bool(body.get("stream")))
    echo = {
        "tool_choice": choice if choice is not None else "auto",
        "tools": body.get("tools") or [],
        "temperature": sampling.temperature if sampling.temperature is not None else 1.0,
        "top_p": sampling.top_p if sampling.top_p is not None else 1.0,
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "metadata": body.get("metadata") or {},
        "store": bool(body.get("store", False)),
    }
    return ResponsesCall(request, conversation, ignored, body.get("instructions"), echo)
