"""The one conversation model the three APIs parse into, and its two ways out.

Chat completions, Responses and Anthropic Messages bodies all become a
:class:`Conversation` (tinker-cookbook's capture-proxy parse result: renderer messages, the system
text, the tool catalog, whether tool calls are forbidden). From it:

- :func:`prompt_messages` gives the renderer messages to sample from (the tool prefix or system
  message prepended), which token-in-token-out keys on: an assistant turn the endpoint produced comes
  back as the same renderer message (role, text, tool call names and argument strings, tool result
  ids) whichever API returns it, so its exact sampled tokens are reused;
- :func:`openai_messages` gives the same conversation in OpenAI chat form, which every LLM-call span
  records (``agl_tinker.messages``), so readers see one schema whatever API was called.

Reasoning the client sends back (Responses ``reasoning`` items, Anthropic ``thinking`` blocks) is not
part of the model: renderers drop past reasoning when they render history, and token-in-token-out
reuses the sampled tokens, reasoning included, for turns the endpoint produced.
"""

from __future__ import annotations

import json
from typing import Any

from tinker_cookbook.capture.proxy.app import _BadRequest, _ParsedChat
from tinker_cookbook.renderers import Message, Renderer, ToolCall, ToolSpec

Conversation = _ParsedChat
"""``messages`` (renderer messages without the system prompt), ``system_text``, ``tool_specs``,
``suppress_tool_calls`` (``tool_choice`` none: calls the policy writes anyway are dropped)."""

BadRequest = _BadRequest
"""Raised for a client mistake; its message names the offending field, never its content."""


def prompt_messages(conversation: Conversation, renderer: Renderer) -> list[Message]:
    """The renderer messages to sample from: the renderer's tool prefix (system text inside it)
    when tools are offered, else a system message when there is system text, then the conversation.

    Raises ``BadRequest`` when tools are offered to a renderer that cannot render them.
    """
    if conversation.tool_specs:
        try:
            prefix = renderer.create_conversation_prefix_with_tools(
                conversation.tool_specs, system_prompt=conversation.system_text or ""
            )
        except NotImplementedError:
            raise BadRequest("this model's renderer does not support tool calling; omit 'tools'") from None
        return [*prefix, *conversation.messages]
    if conversation.system_text is not None:
        return [Message(role="system", content=conversation.system_text), *conversation.messages]
    return list(conversation.messages)


def tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    """A renderer tool call (the shape parsed answers and parsed history share)."""
    return ToolCall(id=call_id, function=ToolCall.FunctionBody(name=name, arguments=arguments))


def tool_spec(name: object, description: object, parameters: object) -> ToolSpec:
    """A renderer tool spec; raises ``BadRequest`` for a missing name or a non-object schema."""
    if not isinstance(name, str) or not name:
        raise BadRequest("each tool requires a non-empty string 'name'")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f"tool {name!r} parameter schema must be an object")
    return ToolSpec(
        name=name,
        description=str(description or ""),
        parameters=parameters or {"type": "object", "properties": {}},
    )


def openai_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """``conversation`` as OpenAI chat messages (system text first), as spans record inputs."""
    out: list[dict[str, Any]] = []
    if conversation.system_text is not None:
        out.append({"role": "system", "content": conversation.system_text})
    for message in conversation.messages:
        content = message.get("content")
        entry: dict[str, Any] = {
            "role": message["role"],
            "content": content if isinstance(content, str) else json.dumps(content, default=str),
        }
        calls = message.get("tool_calls")
        if calls:
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for call in calls
            ]
        for key in ("tool_call_id", "name"):
            if message.get(key):
                entry[key] = message.get(key)
        out.append(entry)
    return out
