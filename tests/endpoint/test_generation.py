"""A ``Generation``'s conversions: the lean server's body and spans equal the ``ModelResponse`` path's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litellm.types.utils import ModelResponse

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer
from agl_tinker.endpoint.generation import (
    Generation,
    completion_dict,
    fill_response,
    generation_from_response,
    span_attributes,
)

MODEL = "Qwen/Qwen3-4B-Instruct-2507"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return get_tokenizer(MODEL)


@pytest.mark.parametrize("logprobs", [False, True])
@pytest.mark.parametrize("kind", ["text", "tool_calls", "text_and_tool_calls"])
def test_lean_fast_path_body_and_span_equal_the_litellm_response(
    tokenizer: Any, kind: str, logprobs: bool
) -> None:
    """The lean server builds its JSON and span attributes without LiteLLM's ModelResponse; they
    must be exactly what the ModelResponse path (LiteLLM dispatch, proxy mode) gives."""
    calls = [{"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}]
    generation = Generation(
        response_id="chatcmpl-1",
        prompt_token_ids=[1, 2, 3],
        response_token_ids=[9707, 0, 151645],
        logprobs=[-0.5, -0.25, -0.125],
        text="" if kind == "tool_calls" else "Hello!",
        tool_calls=[] if kind == "text" else calls,
        finish_reason="stop" if kind == "text" else "tool_calls",
        weights_version=3,
        reused_prefix_length=2,
    )
    messages = [{"role": "user", "content": "Hi"}]
    response = fill_response(generation, MODEL, ModelResponse(), tokenizer, logprobs=logprobs)
    fast = completion_dict(generation, MODEL, tokenizer, logprobs=logprobs)
    slow = response.model_dump()
    fast["created"] = slow["created"]
    assert fast == slow

    def decoded(attributes: dict[str, Any]) -> dict[str, Any]:  # JSON attributes: key order aside
        return {k: json.loads(v) if k == S.AGL_COMPLETION else v for k, v in attributes.items()}

    assert decoded(span_attributes(generation, messages, MODEL)) == decoded(
        span_attributes(generation_from_response(response), messages, MODEL)
    )


@pytest.mark.parametrize("sequence_id", [None, "seq-42"])
def test_a_recorded_sequence_id_reaches_the_span_by_both_paths(
    tokenizer: Any, sequence_id: str | None
) -> None:
    generation = Generation(
        response_id="chatcmpl-2",
        prompt_token_ids=[1, 2],
        response_token_ids=[9707, 151645],
        logprobs=[-0.5, -0.1],
        text="Hello",
        tool_calls=[],
        finish_reason="stop",
        weights_version=4,
        reused_prefix_length=None,
        sampled_sequence_id=sequence_id,
    )
    response = fill_response(generation, MODEL, ModelResponse(), tokenizer, logprobs=False)
    assert generation_from_response(response) == generation
    for attributes in (
        span_attributes(generation, [], MODEL),
        span_attributes(generation_from_response(response), [], MODEL),
    ):
        assert attributes.get(S.AGL_SAMPLED_SEQUENCE_ID) == sequence_id
        assert attributes[S.AGL_WEIGHTS_VERSION] == 4
