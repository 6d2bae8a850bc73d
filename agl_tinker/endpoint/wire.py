"""The three APIs the lean server speaks, each as one :class:`WireApi`: parse a body into the one
conversation model, shape an answer (JSON or SSE) and an error the way that API's clients read them.

Everything between parsing and shaping (model lookup, sampling, token-in-token-out, span recording)
is the server's and the same for all three; a span records which API was called
(:data:`agl_tinker.spans.AGL_API`) and the input in OpenAI chat form, so readers see one schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from agl_tinker.endpoint.chat_request import ChatRequest
from agl_tinker.endpoint.conversation import Conversation, openai_messages
from agl_tinker.endpoint.generation import Generation, completion_dict
from agl_tinker.endpoint.messages_answer import anthropic_error, message_dict, message_events
from agl_tinker.endpoint.messages_request import parse_messages_request
from agl_tinker.endpoint.provider import TinkerChatProvider
from agl_tinker.endpoint.responses_answer import response_dict, response_events
from agl_tinker.endpoint.responses_request import parse_responses_request
from agl_tinker.endpoint.sse import chat_chunks


def openai_error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """An OpenAI-shaped error body (the ``openai`` client reads ``error.message``); one shape for
    the lean server and the LLMProxy mode's request guard."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    """:func:`openai_error_body` as an aiohttp answer."""
    return web.json_response(openai_error_body(message, kind), status=status)


@dataclass(frozen=True)
class ParsedCall:
    """One request of any API, parsed: what the server samples and records."""

    request: Any
    """The :class:`~agl_tinker.endpoint.chat_request.ChatRequest` to sample."""
    span_messages: list[dict[str, Any]]
    """The input in OpenAI chat form, as the span records it."""
    tools_offered: int
    """Tools the prompt declares to the policy (0 when ``tool_choice`` forbids calling them)."""
    ignored_tools: int = 0
    """Declared tools the policy cannot call (hosted/server tools), not rendered."""
    api_call: Any = None
    """The API's own parse result, handed back to :meth:`WireApi.answer`."""


class WireApi(Protocol):
    """One HTTP API over the shared sampling path."""

    name: str
    """Recorded on every span of a call through this API."""
    path: str
    """Route under ``/v1``."""

    def parse(self, body: dict[str, Any], provider: TinkerChatProvider) -> ParsedCall:
        """Validate ``body``; raises ``BadRequest`` naming the field."""
        ...

    def error(self, status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
        """An error body this API's clients read."""
        ...

    def answer(self, generation: Generation, model: str, call: ParsedCall, tokenizer: Any) -> dict[str, Any]:
        """The JSON answer."""
        ...

    def events(self, answer: dict[str, Any], call: ParsedCall) -> Iterator[bytes]:
        """The same answer as this API's SSE events."""
        ...


class _ConversationParse(Protocol):
    """What a Responses or Messages parse holds (:class:`ResponsesCall`, :class:`MessagesCall`)."""

    @property
    def request(self) -> ChatRequest: ...
    @property
    def conversation(self) -> Conversation: ...
    @property
    def ignored_tools(self) -> int: ...


def _conversation_call(parsed: _ConversationParse) -> ParsedCall:
    """The :class:`ParsedCall` of an API parsed into a :class:`Conversation`: the span records its
    messages in OpenAI chat form and the parse itself is handed back to ``answer``."""
    return ParsedCall(
        parsed.request,
        openai_messages(parsed.conversation),
        len(parsed.conversation.tool_specs),
        parsed.ignored_tools,
        parsed,
    )


class ChatCompletionsApi:
    name = "chat.completions"
    path = "/chat/completions"

    def parse(self, body: dict[str, Any], provider: TinkerChatProvider) -> ParsedCall:
        request = provider.parse(body)
        # the catalog the parse kept (none under tool_choice "none"), as the other two APIs count
        return ParsedCall(request, body["messages"], len(request.tool_specs))

    def error(self, status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
        return openai_error(status, message, kind)

    def answer(self, generation: Generation, model: str, call: ParsedCall, tokenizer: Any) -> dict[str, Any]:
        return completion_dict(generation, model, tokenizer, logprobs=call.request.logprobs)

    def events(self, answer: dict[str, Any], call: ParsedCall) -> Iterator[bytes]:
        return chat_chunks(answer, include_usage=call.request.include_usage)


class ResponsesApi:
    name = "responses"
    path = "/responses"

    def parse(self, body: dict[str, Any], provider: TinkerChatProvider) -> ParsedCall:
        return _conversation_call(parse_responses_request(body, provider))

    def error(self, status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
        return openai_error(status, message, kind)

    def answer(self, generation: Generation, model: str, call: ParsedCall, tokenizer: Any) -> dict[str, Any]:
        return response_dict(generation, model, call.api_call)

    def events(self, answer: dict[str, Any], call: ParsedCall) -> Iterator[bytes]:
        return response_events(answer)


class MessagesApi:
    name = "messages"
    path = "/messages"

    def parse(self, body: dict[str, Any], provider: TinkerChatProvider) -> ParsedCall:
        return _conversation_call(parse_messages_request(body, provider))

    def error(self, status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
        return anthropic_error(status, message, "api_error" if status >= 500 else kind)

    def answer(self, generation: Generation, model: str, call: ParsedCall, tokenizer: Any) -> dict[str, Any]:
        return message_dict(generation, model)

    def events(self, answer: dict[str, Any], call: ParsedCall) -> Iterator[bytes]:
        return message_events(answer)


CHAT = ChatCompletionsApi()
RESPONSES = ResponsesApi()
MESSAGES = MessagesApi()
APIS: tuple[WireApi, ...] = (CHAT, RESPONSES, MESSAGES)
