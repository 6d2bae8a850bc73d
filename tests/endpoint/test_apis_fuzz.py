"""Fuzzed ``/v1/responses`` and ``/v1/messages`` bodies: never a 5xx, and every 4xx says why in the
error shape that API's clients read (issue 32)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_endpoint_bad_requests import BAD_TOOL_CALL, JSON, Background, ScriptedSampler, _value

from agl_tinker.backend import get_tokenizer
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
CALL = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    background = Background()
    tokenizer = get_tokenizer(MODEL)
    store = LightningStoreThreaded(InMemoryLightningStore())
    sampler = ScriptedSampler(tokenizer, ["Hello there.", CALL, BAD_TOOL_CALL])

    async def start() -> Endpoint:
        return await start_endpoint(
            EndpointConfig(max_context_tokens=4096, default_max_tokens=32),
            store=store,
            sampling_client=sampler,
            base_model=MODEL,
            tokenizer=tokenizer,
        )

    endpoint = background.run(start())
    client = httpx.Client(base_url=endpoint.url, timeout=60)
    yield client
    client.close()
    background.run(endpoint.stop())
    background.close()


TEXT_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "text", "refusal", "input_image"]) | JSON},
    optional={"text": st.text(max_size=8) | JSON, "refusal": JSON},
)
RESPONSES_ITEM = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | JSON},
        optional={
            "type": st.just("message") | JSON,
            "content": st.text(max_size=8) | st.lists(TEXT_PART, max_size=2) | JSON,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call")},
        optional={
            "call_id": st.sampled_from(["c1", ""]) | JSON,
            "name": st.sampled_from(["f", ""]) | JSON,
            "arguments": st.sampled_from(['{"a": 1}', "{x", ""]) | JSON,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call_output")},
        optional={"call_id": st.sampled_from(["c1", ""]) | JSON, "output": st.text(max_size=8) | JSON},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["reasoning", "item_reference", "web_search_call"]) | JSON}
    ),
    JSON,
)
RESPONSES_TOOL = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("function"), "name": st.sampled_from(["f", ""]) | JSON},
        optional={"parameters": JSON, "strict": JSON, "description": JSON},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "namespace", "custom"]) | JSON}),
)
RESPONSES = st.one_of(
    st.fixed_dictionaries(
        {
            "model": st.just(MODEL) | st.just("Qwen3-4B-Instruct-2507") | JSON,
            "input": _value(st.text(max_size=8) | st.lists(RESPONSES_ITEM, min_size=1, max_size=4)),
        },
        optional={
            "instructions": _value(st.text(max_size=8)),
            "tools": _value(st.lists(RESPONSES_TOOL, max_size=3)),
            "tool_choice": _value(st.sampled_from(["auto", "none", "required"])),
            "max_output_tokens": _value(st.integers(-2, 40)),
            "temperature": _value(st.floats(-1, 3)),
            "top_p": _value(st.floats(-0.5, 1.5)),
            "stream": _value(st.booleans()),
            "store": JSON,
            "include": JSON,
            "reasoning": _value(st.just({"effort": "low"})),
            "text": _value(
                st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_schema"}}])
            ),
            "previous_response_id": _value(st.just("resp_1")),
            "metadata": JSON,
        },
    ),
    JSON,
)

GOOD_ITEMS = st.lists(
    st.sampled_from(
        [
            {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
            {"role": "user", "content": "Find it."},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Looking."}],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "found"},
            {"type": "reasoning", "summary": []},
        ]
    ),
    min_size=1,
    max_size=5,
)
PLAUSIBLE_RESPONSES = st.fixed_dictionaries(
    {"model": st.just(MODEL), "input": st.text(max_size=8) | GOOD_ITEMS},
    optional={
        "instructions": st.text(max_size=8),
        "tools": st.lists(RESPONSES_TOOL, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none"]),
        "max_output_tokens": st.integers(1, 40),
        "stream": st.booleans(),
        "store": st.booleans(),
        "parallel_tool_calls": st.booleans(),
    },
)
BLOCK = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=8) | JSON}),
    st.fixed_dictionaries(
        {"type": st.just("tool_use")},
        optional={"id": st.just("t1") | JSON, "name": st.just("f") | JSON, "input": JSON},
    ),
    st.fixed_dictionaries(
        {"type": st.just("tool_result")},
        optional={
            "tool_use_id": st.just("t1") | JSON,
            "content": st.text(max_size=8) | JSON,
            "is_error": JSON,
        },
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["thinking", "image", "document"]) | JSON}),
)
ANTHROPIC_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | JSON},
    optional={"content": st.text(max_size=8) | st.lists(BLOCK, max_size=3) | JSON},
)
MESSAGES = st.one_of(
    st.fixed_dictionaries(
        {
            "model": st.just(MODEL) | st.just("Qwen3-4B-Instruct-2507") | JSON,
            "messages": _value(st.lists(ANTHROPIC_MESSAGE, min_size=1, max_size=4)),
        },
        optional={
            "system": _value(st.text(max_size=8) | st.lists(BLOCK, max_size=2)),
            "max_tokens": _value(st.integers(-2, 40)),
            "tools": _value(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.just("f") | JSON}, optional={"input_schema": JSON, "type": JSON}
                    ),
                    max_size=2,
                )
            ),
            "tool_choice": _value(st.sampled_from([{"type": "auto"}, {"type": "none"}, {"type": "any"}])),
            "stop_sequences": _value(st.lists(st.text(max_size=3), max_size=5)),
            "top_k": _value(st.integers(-2, 5)),
            "stream": _value(st.booleans()),
            "thinking": JSON,
            "metadata": JSON,
        },
    ),
    JSON,
)


PLAUSIBLE_MESSAGES = st.fixed_dictionaries(
    {
        "model": st.just(MODEL),
        "max_tokens": st.integers(1, 40),
        "messages": st.lists(
            st.sampled_from(
                [
                    {"role": "user", "content": "Find it."},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found"}],
                    },
                    {
                        "role": "assistant",
                        "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "ok"}],
                    },
                    {"role": "system", "content": "Be brief."},
                ]
            ),
            min_size=1,
            max_size=5,
        ),
    },
    optional={
        "system": st.sampled_from(
            ["Be brief.", [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]]
        ),
        "tools": st.just(
            [
                {"name": "f", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search"},
            ]
        ),
        "stream": st.booleans(),
        "stop_sequences": st.lists(st.text(min_size=1, max_size=3), max_size=2),
    },
)


def _post(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    content = json.dumps(body).encode()  # NaN and Infinity too, as a client may send them
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, (response.status_code, response.text[:500])
    return response


@pytest.mark.slow
@FUZZ
@given(body=PLAUSIBLE_RESPONSES | RESPONSES)
def test_fuzzed_responses_bodies_never_get_a_5xx_and_every_4xx_says_why(
    http: httpx.Client, body: Any
) -> None:
    response = _post(http, "/v1/responses", body)
    if response.status_code >= 400:
        message = response.json()["error"]["message"]
        assert isinstance(message, str) and message, response.text[:500]


@FUZZ
@given(body=PLAUSIBLE_MESSAGES | MESSAGES)
def test_fuzzed_messages_bodies_never_get_a_5xx_and_every_4xx_says_why(http: httpx.Client, body: Any) -> None:
    response = _post(http, "/v1/messages", body)
    if response.status_code >= 400:
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert isinstance(error["error"]["message"], str) and error["error"]["message"], response.text[:500]
