"""Malformed requests get a 400 that says why, in both endpoint modes; nothing in a request body
makes the server answer 5xx (issue 14). The policy's own malformed tool calls come back as text."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import tinker
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
BAD_TOOL_CALL = '<tool_call>\n{"name": "search", "arguments": {"q": }\n</tool_call>'
T = TypeVar("T")


class ScriptedSampler:
    """A sampling client answering instantly with scripted texts (cycled), cut at ``max_tokens``:
    the endpoint under test, not a policy, is what these tests exercise."""

    def __init__(self, tokenizer: Any, texts: list[str]) -> None:
        self.tokenizer = tokenizer
        self.texts = texts
        self.calls = 0

    async def sample(self, prompt: tinker.ModelInput, num_samples: int, sampling_params: Any) -> Any:
        text = self.texts[self.calls % len(self.texts)]
        self.calls += 1
        tokens = [*self.tokenizer.encode(text, add_special_tokens=False), 151645][
            : sampling_params.max_tokens
        ]
        sequence = tinker.SampledSequence(
            stop_reason="stop",
            sequence_id=f"s{self.calls}",
            tokens_np=np.array(tokens, dtype=np.int32),
            logprobs_np=np.full(len(tokens), -0.25, dtype=np.float32),
        )
        return tinker.SampleResponse(sequences=[sequence])


class Background:
    """An event loop on its own thread: the endpoint lives on it while sync tests (and hypothesis)
    send requests with a plain HTTP client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-endpoint-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


class Served:
    def __init__(self, mode: str, endpoint: Endpoint, store: Any, background: Background) -> None:
        self.mode, self.endpoint, self.store, self.background = mode, endpoint, store, background
        self.http = httpx.Client(base_url=endpoint.url, timeout=60)

    def post(self, body: Any, path: str = "/v1/chat/completions") -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(path, content=content, headers={"content-type": "application/json"})

    def rollout_path(self) -> tuple[str, str]:
        attempted = self.background.run(self.store.start_rollout(input={"task": "t"}))
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        return rid, f"/rollout/{rid}/attempt/{aid}/v1/chat/completions"


@pytest.fixture(scope="module", params=["lean", "proxy"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    background = Background()
    tokenizer = get_tokenizer(MODEL)
    store = LightningStoreThreaded(InMemoryLightningStore())
    sampler = ScriptedSampler(tokenizer, ["Hello there.", BAD_TOOL_CALL, "Sure."])

    async def start() -> Endpoint:
        return await start_endpoint(
            EndpointConfig(mode=request.param, max_context_tokens=4096, default_max_tokens=32),
            store=store,
            sampling_client=sampler,
            base_model=MODEL,
            tokenizer=tokenizer,
        )

    endpoint = background.run(start())
    served = Served(request.param, endpoint, store, background)
    yield served
    served.http.close()
    background.run(endpoint.stop())
    background.close()


def _body(**overrides: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], **overrides}


def _error(response: httpx.Response) -> str:
    """The OpenAI-shaped error's message (the ``openai`` client shows ``error.message``)."""
    assert response.status_code == 400, (response.status_code, response.text)
    message = response.json()["error"]["message"]
    assert isinstance(message, str) and message
    return message


def test_history_tool_call_arguments_that_are_not_json_are_a_400(served: Served) -> None:
    for arguments in ("{not json", "[1, 2]", {"q": 1}):
        messages = [
            {"role": "user", "content": "Find it."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
        ]
        message = _error(served.post(_body(messages=messages)))
        assert "messages[1].tool_calls[0].function.arguments" in message and "JSON object" in message


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/messages"])
def test_a_body_nested_too_deeply_to_decode_is_a_400(served: Served, path: str) -> None:
    """``json.loads`` raises RecursionError past Python's recursion limit: that was a 500."""
    if served.mode == "proxy" and path != "/v1/chat/completions":
        pytest.skip("the LLMProxy mode serves chat completions only")
    deep = b'{"model": "%s", "messages": %s%s}' % (MODEL.encode(), b"[" * 100_000, b"]" * 100_000)
    response = served.post(deep, path)
    assert response.status_code == 400, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert "nested too deeply" in (error["message"] if isinstance(error, dict) else str(error))


def test_negative_seed_is_a_400_that_says_seeds_are_non_negative(served: Served) -> None:
    assert "non-negative" in _error(served.post(_body(seed=-1)))
    assert "non-negative" in _error(served.post(_body(seed=2**64)))
    assert served.post(_body(seed=7)).status_code == 200


@pytest.mark.parametrize("model", [[MODEL], {"name": MODEL}, 3, None])
def test_model_that_is_not_a_string_is_a_400(served: Served, model: Any) -> None:
    message = _error(served.post(_body(model=model)))
    assert "model" in message.lower()


@pytest.mark.parametrize("field", ["response_format", "metadata", "user"])
@pytest.mark.parametrize("value", [[], [1], 1, True, "text"])
def test_optional_fields_of_the_wrong_type_never_get_a_5xx(served: Served, field: str, value: Any) -> None:
    """OpenAI's ``response_format`` and ``metadata`` are objects and ``user`` a string. LiteLLM's
    proxy raised a TypeError (a 500) on ``response_format=[]``; both modes give the same 400."""
    response = served.post(_body(**{field: value}))
    if field == "user" and isinstance(value, str):
        assert response.status_code == 200, response.text[:300]
    else:
        assert f"'{field}'" in _error(response)


def test_policy_tool_call_that_does_not_parse_is_returned_as_text_and_counted(served: Served) -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    rid, path = served.rollout_path()
    answers = [served.post(_body(tools=tools), path).json() for _ in range(3)]  # the script cycles
    (botched,) = [a for a in answers if "<tool_call>" in (a["choices"][0]["message"]["content"] or "")]
    choice = botched["choices"][0]
    assert (
        choice["message"]["content"].endswith(BAD_TOOL_CALL.strip())
        or BAD_TOOL_CALL in choice["message"]["content"]
    )
    assert not choice["message"].get("tool_calls") and choice["finish_reason"] == "stop"
    served.background.run(served.endpoint.flush())
    spans = served.background.run(served.store.query_spans(rid))
    rec = reconstruct(spans)
    assert rec.metrics["tool_call_parse_failures"] == 1
    assert sorted(s.attributes.get(S.AGL_TOOL_CALL_PARSE_FAILURES, 0) for s in spans) == [0, 0, 1]


def test_spans_the_store_refuses_are_counted_for_the_step(served: Served) -> None:
    served.endpoint.span_metrics()  # start counting from here
    _, path = served.rollout_path()
    assert served.post(_body(), path).status_code == 200
    assert (
        served.post(_body(), "/rollout/ro-unknown/attempt/at-unknown/v1/chat/completions").status_code == 200
    )
    served.background.run(served.endpoint.flush())
    counts = served.endpoint.span_metrics()
    assert counts["spans/written"] == 1 and counts["spans/dropped"] == 1 and counts["spans/failed"] == 0
    assert served.endpoint.span_metrics() == {
        "spans/written": 0,
        "spans/dropped": 0,
        "spans/failed": 0,
        "endpoint/max_tokens_clamped": 0,
        "endpoint/tools_ignored": 0,
    }


# --- fuzz --------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
ROLES = st.sampled_from(["user", "assistant", "system", "tool", "developer", "function", ""]) | JSON
CONTENT = (
    st.text(max_size=20)
    | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": JSON}), max_size=2
    )
    | JSON
)
TOOL_CALL = st.fixed_dictionaries(
    {"id": JSON | st.text(max_size=5), "type": st.just("function") | JSON},
    optional={
        "function": st.fixed_dictionaries(
            {},
            optional={
                "name": st.text(max_size=5) | JSON,
                "arguments": st.sampled_from(["{}", '{"a": 1}', "{x", "[]", ""]) | JSON,
            },
        )
        | JSON
    },
)
MESSAGE = (
    st.fixed_dictionaries(
        {"role": ROLES},
        optional={
            "content": CONTENT,
            "tool_calls": st.lists(TOOL_CALL, max_size=2) | JSON,
            "tool_call_id": st.text(max_size=4) | JSON,
            "name": JSON,
        },
    )
    | JSON
)
GOOD_MESSAGES = st.just([{"role": "user", "content": "Say hello."}]) | st.just(
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Find it."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
    ]
)
GOOD_TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


def _value(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value (so requests get far into the endpoint), sometimes any JSON."""
    return st.one_of(plausible, plausible, JSON)


PARAMS: dict[str, st.SearchStrategy[Any]] = {
    "temperature": _value(st.floats(-1, 3)),
    "top_p": _value(st.floats(-0.5, 1.5)),
    "top_k": _value(st.integers(-3, 100)),
    "seed": _value(st.integers(-(2**65), 2**65)),
    "max_tokens": _value(st.integers(-5, 40) | st.integers(-5, 10**9)),
    "max_completion_tokens": _value(st.integers(-5, 40)),
    "stop": _value(st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=6)),
    "logprobs": _value(st.booleans()),
    "top_logprobs": _value(st.integers(-1, 5)),
    "stream": _value(st.booleans()),
    "stream_options": _value(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "tools": _value(
        st.just(GOOD_TOOLS)
        | st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.just("function") | JSON,
                    "function": st.fixed_dictionaries(
                        {"name": st.text(max_size=5) | JSON}, optional={"parameters": JSON}
                    ),
                }
            ),
            max_size=2,
        )
    ),
    "tool_choice": _value(st.sampled_from(["auto", "none", "required"])),
    "n": _value(st.integers(-1, 3)),
    "response_format": JSON,
    "metadata": JSON,
    "user": JSON,
}
BODIES = st.one_of(
    st.fixed_dictionaries(
        {
            "model": st.one_of(st.just(MODEL), st.just(MODEL), st.just(MODEL), JSON),
            "messages": st.one_of(GOOD_MESSAGES, GOOD_MESSAGES, st.lists(MESSAGE, max_size=4), JSON),
        },
        optional=PARAMS,
    ),
    JSON,
)


def _check(response: httpx.Response) -> None:
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"], response.text[:500]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES)
def test_fuzzed_bodies_never_get_a_5xx_and_every_4xx_says_why(served: Served, body: Any) -> None:
    _check(served.post(body))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_bodies_that_are_not_json_objects_are_a_400(served: Served, raw: bytes) -> None:
    response = served.post(raw)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        _error(response)
    else:
        _check(response)
