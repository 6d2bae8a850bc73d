"""An Anthropic Messages request (``POST /v1/messages``), parsed into the one conversation model.

Parsing is tinker-cookbook's capture proxy's (``_parse_anthropic``): ``system`` as a string or text
blocks (``cache_control`` ignored), ``role: "system"`` messages mid-conversation folded into the
system text, ``text``/``tool_use``/``tool_result`` blocks (``is_error`` accepted; the result's text
is what renders), ``tool_choice`` ``auto``/``none``, ``thinking`` accepted. This module adds what the
API has and the cookbook does not check: ``thinking``/``redacted_thinking`` blocks a client sends back
are dropped (renderers drop past reasoning; token-in-token-out reuses the endpoint's own turns'
tokens), server tools (a ``type`` other than ``custom``: web search, bash, text editor...) are ignored
and counted, ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` and ``stream``
are validated. ``metadata``, ``output_config``, ``context_management``, ``service_tier``,
``container`` are accepted and ignored, as are the ``anthropic-beta``/``anthropic-version`` headers
and ``?beta=true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tinker_cookbook.capture.proxy.app import _parse_anthropic

from agl_tinker.endpoint.chat_request import ChatRequest, chat_request, sampling_settings
from agl_tinker.endpoint.conversation import BadRequest, Conversation
from agl_tinker.endpoint.provider import TinkerChatProvider

_DROPPED_BLOCKS = ("thinking", "redacted_thinking")


@dataclass(frozen=True)
class MessagesCall:
    """A parsed Messages request: what to sample, and how many declared tools were not rendered."""

    request: ChatRequest
    conversation: Conversation
    ignored_tools: int


def _without_reasoning(messages: object) -> object:
    """``messages`` with the reasoning blocks of assistant turns left out (other shapes as they are:
    the cookbook's parser reports them)."""
    if not isinstance(messages, list):
        return messages
    out: list[object] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and message.get("role") == "assistant":
            kept = [b for b in content if not (isinstance(b, dict) and b.get("type") in _DROPPED_BLOCKS)]
            message = {**message, "content": kept}
        out.append(message)
    return out


def _client_tools(tools: object) -> tuple[object, int]:
    """The tools the policy can call (client tools) and how many server tools were left out."""
    if not isinstance(tools, list):
        return tools, 0
    kept = [t for t in tools if not isinstance(t, dict) or t.get("type") in (None, "custom")]
    return kept, len(tools) - len(kept)


def _check_types(body: dict[str, Any]) -> None:
    for key in ("metadata", "output_config", "context_management"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise BadRequest(f"'{key}' must be an object")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, dict):
        raise BadRequest("'tool_choice' must be an object such as {'type': 'auto'}")


def parse_messages_request(body: dict[str, Any], provider: TinkerChatProvider) -> MessagesCall:
    """Validate a Messages body against ``provider``'s renderer; raises ``BadRequest`` naming the field."""
    _check_types(body)
    tools, ignored = _client_tools(body.get("tools"))
    cleaned = {**body, "tools": tools, "messages": _without_reasoning(body.get("messages"))}
    conversation = _parse_anthropic(cleaned)
    if not conversation.messages:
        raise BadRequest("'messages' holds no conversation: add a user message")
    sampling = sampling_settings(
        body, provider.default_max_tokens, max_keys=("max_tokens",), stop_key="stop_sequences"
    )
    request = chat_request(conversation, provider.renderer, sampling, stream=bool(body.get("stream")))
    return MessagesCall(request, conversation, ignored)
