"""What one sampled completion is (:class:`Generation`), and its conversions to what clients see.

A ``Generation`` is built once per answered request by the provider; everything an answer turns into
is a pure function of it here: the OpenAI chat-completion body (:func:`completion_dict`, the lean
server's), the same body as a LiteLLM ``ModelResponse`` (:func:`fill_response`, the LiteLLM paths'),
the LLM-call span attributes (:func:`span_attributes`) and the way back from a ``ModelResponse``
(:func:`generation_from_response`). Both bodies carry the token extras: ``prompt_token_ids`` and
``weights_version`` on the response, ``token_ids`` and ``token_logprobs`` on the choice (vLLM's names
where vLLM has one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from litellm.types.utils import Choices, Message, ModelResponse, Usage
from tinker_cookbook.renderers import ToolCall

from agl_tinker.spans import llm_call_attributes

# ``ModelResponse._hidden_params`` keys: fill_response writes them, generation_from_response reads them.
_REUSED_PREFIX = "agl_tinker_reused_prefix_length"
_PARSE_FAILURES = "agl_tinker_tool_call_parse_failures"
_SAMPLED_SEQUENCE_ID = "agl_tinker_sampled_sequence_id"


@dataclass(frozen=True)
class Generation:
    """One answered request: exactly what was sampled and what the agent sees."""

    response_id: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    logprobs: list[float] | None
    text: str
    tool_calls: list[dict[str, Any]]
    """OpenAI-shaped tool calls (:func:`openai_tool_calls`)."""
    finish_reason: str
    weights_version: int | str
    reused_prefix_length: int | None
    """Prompt tokens taken verbatim from an earlier answer (token-in-token-out), if any."""
    tool_call_parse_failures: int = 0
    """Tool calls the policy wrote that did not parse; they are in ``text`` as written."""
    stop_sequence: str | None = None
    """The client stop string the answer was cut at, if one was."""
    sampled_sequence_id: str | None = None
    """The sample's ``sequence_id`` when the sampling client records stability info (else ``None``)."""


def openai_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Parsed tool calls in OpenAI's shape, as :attr:`Generation.tool_calls` holds them.

    Args:
        calls: the renderer's parsed tool calls.

    Returns:
        One ``{"id", "type": "function", "function": {"name", "arguments"}}`` per call; a call
        without an id gets a fresh ``call_...`` one.
    """
    return [
        {
            "id": call.id or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments},
        }
        for call in calls
    ]


def _answer_content(generation: Generation) -> str | None:
    """OpenAI's convention: ``None`` content for an answer that is only tool calls."""
    return generation.text if generation.text or not generation.tool_calls else None


def _openai_logprobs(generation: Generation, tokenizer: Any) -> dict[str, Any] | None:
    """OpenAI's ``choice.logprobs`` (no alternatives); ``None`` when nothing was sampled with logprobs."""
    if generation.logprobs is None:
        return None
    pieces = tokenizer.convert_ids_to_tokens(generation.response_token_ids)
    return {
        "content": [
            {"token": str(piece), "logprob": lp, "bytes": None, "top_logprobs": []}
            for piece, lp in zip(pieces, generation.logprobs, strict=False)
        ]
    }


def completion_dict(generation: Generation, model: str, tokenizer: Any, *, logprobs: bool) -> dict[str, Any]:
    """``generation`` as the JSON body :func:`fill_response`'s ``model_dump()`` gives, built directly.

    The lean server's hot path uses it to skip building LiteLLM's pydantic response.

    Args:
        generation: the answer.
        model: the served model name the body reports.
        tokenizer: the policy's tokenizer (names the tokens of ``choice.logprobs``).
        logprobs: whether the request asked for OpenAI ``logprobs``.

    Returns:
        The ``chat.completion`` body, token extras included.
    """
    choice: dict[str, Any] = {
        "finish_reason": generation.finish_reason,
        "index": 0,
        "message": {
            "content": _answer_content(generation),
            "role": "assistant",
            "tool_calls": generation.tool_calls or None,
            "function_call": None,
        },
        "token_ids": generation.response_token_ids,
        "token_logprobs": generation.logprobs,
    }
    if logprobs:
        choice["logprobs"] = _openai_logprobs(generation, tokenizer)
    prompt_tokens, completion_tokens = (
        len(generation.prompt_token_ids),
        len(generation.response_token_ids),
    )
    return {
        "id": generation.response_id,
        "created": int(time.time()),
        "model": model,
        "object": "chat.completion",
        "choices": [choice],
        "usage": {
            "completion_tokens": completion_tokens,
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens_details": None,
            "prompt_tokens_details": None,
        },
        "prompt_token_ids": generation.prompt_token_ids,
        "weights_version": generation.weights_version,
    }


def fill_response(
    generation: Generation, model: str, response: ModelResponse, tokenizer: Any, *, logprobs: bool
) -> ModelResponse:
    """Write ``generation`` into a LiteLLM ``ModelResponse`` (OpenAI shape plus token extras).

    Args:
        generation: the answer.
        model: the model name the response reports.
        response: the response LiteLLM handed the provider; filled in place.
        tokenizer: the policy's tokenizer (names the tokens of ``choice.logprobs``).
        logprobs: whether the request asked for OpenAI ``logprobs``.

    Returns:
        ``response``, which :func:`generation_from_response` turns back into ``generation``.
    """
    response.id = generation.response_id
    response.created = int(time.time())
    response.model = model
    choice = Choices(
        index=0,
        finish_reason=generation.finish_reason,
        message=Message(
            role="assistant",
            content=_answer_content(generation),
            tool_calls=generation.tool_calls or None,
        ),
        logprobs=_openai_logprobs(generation, tokenizer) if logprobs else None,
    )
    choice.token_ids = generation.response_token_ids  # type: ignore[attr-defined]
    choice.token_logprobs = generation.logprobs  # type: ignore[attr-defined]
    response.choices = [choice]
    response.usage = Usage(  # type: ignore[attr-defined]
        prompt_tokens=len(generation.prompt_token_ids),
        completion_tokens=len(generation.response_token_ids),
        total_tokens=len(generation.prompt_token_ids) + len(generation.response_token_ids),
    )
    response.prompt_token_ids = generation.prompt_token_ids  # type: ignore[attr-defined]
    response.weights_version = generation.weights_version  # type: ignore[attr-defined]
    # The cost is known (nothing is billed); saying so spares LiteLLM a pricing lookup per call.
    response._hidden_params["response_cost"] = 0.0
    response._hidden_params[_REUSED_PREFIX] = generation.reused_prefix_length
    response._hidden_params[_PARSE_FAILURES] = generation.tool_call_parse_failures
    response._hidden_params[_SAMPLED_SEQUENCE_ID] = generation.sampled_sequence_id
    return response


def span_attributes(
    generation: Generation, messages: Sequence[Mapping[str, Any]], model: str
) -> dict[str, Any]:
    """The LLM-call span attributes of one answer: an adapter onto :func:`agl_tinker.spans.llm_call_attributes`.

    Both servers record through it: the lean server from the ``Generation`` it answered with, the
    LiteLLM paths (the lean server's ``litellm_dispatch``, LLMProxy's callback) from the response
    via :func:`generation_from_response`.

    Args:
        generation: the answer.
        messages: the request's messages, as the agent sent them.
        model: the served model name (request and response model).

    Returns:
        The span attributes.
    """
    completion: dict[str, Any] = {"role": "assistant", "content": _answer_content(generation)}
    if generation.tool_calls:
        completion["tool_calls"] = generation.tool_calls
    return llm_call_attributes(
        prompt_token_ids=generation.prompt_token_ids,
        response_token_ids=generation.response_token_ids,
        logprobs=generation.logprobs,
        response_id=generation.response_id,
        model=model,
        response_model=model,
        finish_reason=generation.finish_reason,
        weights_version=generation.weights_version,
        sampled_sequence_id=generation.sampled_sequence_id,
        messages=messages,
        completion=completion,
        prefix_length=generation.reused_prefix_length,
        tool_call_parse_failures=generation.tool_call_parse_failures,
    )


def generation_from_response(response: ModelResponse) -> Generation:
    """The ``Generation`` a response was filled from by :func:`fill_response`.

    Args:
        response: an answer of the provider, as LiteLLM hands it back (token extras included).

    Returns:
        The generation; ``text`` is the message content (``""`` for a tool-call-only answer).
    """
    choice = response.choices[0]
    message = choice.message  # type: ignore[union-attr,attr-defined]
    return Generation(
        response_id=response.id,
        prompt_token_ids=response.prompt_token_ids,  # type: ignore[attr-defined]
        response_token_ids=choice.token_ids,  # type: ignore[union-attr,attr-defined]
        logprobs=choice.token_logprobs,  # type: ignore[union-attr,attr-defined]
        text=message.content or "",
        tool_calls=[call.model_dump() for call in message.tool_calls or []],
        finish_reason=cast(str, choice.finish_reason),  # as fill_response set it
        weights_version=response.weights_version,  # type: ignore[attr-defined]
        reused_prefix_length=response._hidden_params.get(_REUSED_PREFIX),
        tool_call_parse_failures=response._hidden_params.get(_PARSE_FAILURES) or 0,
        sampled_sequence_id=response._hidden_params.get(_SAMPLED_SEQUENCE_ID),
    )
