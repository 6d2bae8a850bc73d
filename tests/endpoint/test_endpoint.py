"""The endpoint through a real ``openai.OpenAI`` client, against both servers over the simulator."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import litellm
import openai
import pytest
import pytest_asyncio
import tinker
from agentlightning.adapter.triplet import TracerTraceToTriplet
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.core.align import align_calls
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
pytestmark = pytest.mark.asyncio(loop_scope="module")


class RecordingClient:
    """A sampling client that keeps every response the simulator returned, in order."""

    def __init__(self, inner: Any, script: list[str] | None = None, tokenizer: Any = None) -> None:
        self.inner = inner
        self.responses: list[tinker.SampleResponse] = []
        self.prompts: list[list[int]] = []
        self.script = list(script or [])
        self.tokenizer = tokenizer
        self.lock = threading.Lock()

    async def sample(self, prompt: tinker.ModelInput, num_samples: int, sampling_params: Any) -> Any:
        if self.script:
            text = self.script.pop(0)
            tokens = [*self.tokenizer.encode(text, add_special_tokens=False), 151645]
            seq = tinker.SampledSequence(
                stop_reason="stop", sequence_id="s", _tokens_list=tokens, _logprobs_list=[-0.5] * len(tokens)
            )
            response = tinker.SampleResponse(sequences=[seq])
        else:
            response = await self.inner.sample(
                prompt=prompt, num_samples=num_samples, sampling_params=sampling_params
            )
        with self.lock:
            self.prompts.append(prompt.to_ints())
            self.responses.append(response)
        return response


def _sampler(**knobs: Any) -> Any:
    future = service_client(**knobs).create_sampling_client(base_model=MODEL)
    return future.result() if hasattr(future, "result") else future


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return get_tokenizer(MODEL)


@pytest_asyncio.fixture(
    scope="module", params=["lean", "lean+litellm_dispatch", "proxy"], loop_scope="module"
)
async def served(
    request: pytest.FixtureRequest, tokenizer: Any
) -> AsyncIterator[tuple[Endpoint, RecordingClient, Any]]:
    store = LightningStoreThreaded(InMemoryLightningStore())
    client = RecordingClient(_sampler(latency_s=0.0, drift=0.0), tokenizer=tokenizer)
    endpoint = await start_endpoint(
        EndpointConfig(
            mode="proxy" if request.param == "proxy" else "lean",
            litellm_dispatch=request.param.endswith("litellm_dispatch"),
            max_context_tokens=4096,
            default_max_tokens=64,
        ),
        store=store,
        sampling_client=client,
        base_model=MODEL,
        tokenizer=tokenizer,
    )
    yield endpoint, client, store
    await endpoint.stop()


async def _rollout(store: Any, endpoint: Endpoint) -> tuple[str, openai.OpenAI]:
    attempted = await store.start_rollout(input={"task": "t"})
    llm = endpoint.as_resource(attempted.rollout_id, attempted.attempt.attempt_id)
    return attempted.rollout_id, openai.OpenAI(base_url=llm.endpoint, api_key="not-a-secret", max_retries=0)


async def _chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    kwargs.setdefault("model", MODEL)
    return await asyncio.to_thread(client.chat.completions.create, **kwargs)


async def test_text_answer_carries_sampled_tokens_and_logprobs(served: Any, tokenizer: Any) -> None:
    endpoint, sim, store = served
    _, client = await _rollout(store, endpoint)
    answer = await _chat(client, messages=[{"role": "user", "content": "Say hello."}], logprobs=True)
    sampled = sim.responses[-1].sequences[0]
    choice = answer.choices[0]
    assert choice.model_extra["token_ids"] == list(sampled.tokens)
    assert choice.model_extra["token_logprobs"] == pytest.approx(list(sampled.logprobs))
    assert [entry.logprob for entry in choice.logprobs.content] == pytest.approx(list(sampled.logprobs))
    assert answer.model_extra["prompt_token_ids"] == sim.prompts[-1]
    assert answer.model_extra["weights_version"] == endpoint.weights_version
    assert choice.message.content == tokenizer.decode(list(sampled.tokens)).removesuffix("<|im_end|>")
    assert choice.finish_reason == "stop"


async def test_spans_read_back_by_both_readers(served: Any) -> None:
    endpoint, _, store = served
    rollout_id, client = await _rollout(store, endpoint)
    answers = [
        await _chat(client, messages=[{"role": "user", "content": f"Count to {i}."}]) for i in range(3)
    ]
    await endpoint.flush()
    spans = await store.query_spans(rollout_id)
    calls = reconstruct(spans).calls
    triplets = TracerTraceToTriplet(llm_call_match=S.TRIPLET_LLM_CALL_MATCH).adapt(spans)
    expected = [(a.model_extra["prompt_token_ids"], a.choices[0].model_extra["token_ids"]) for a in answers]
    assert [(c.prompt_token_ids, c.response_token_ids) for c in calls] == expected
    assert [(t.prompt["token_ids"], t.response["token_ids"]) for t in triplets] == expected
    assert {c.weights_version for c in calls} == {endpoint.weights_version}


async def test_calls_served_are_counted_per_attempt_and_released(served: Any) -> None:
    endpoint, _, store = served
    rollout_id, client = await _rollout(store, endpoint)
    first = (await store.query_attempts(rollout_id))[-1].attempt_id
    for i in range(2):
        await _chat(client, messages=[{"role": "user", "content": f"Count to {i}."}])
    retried = await store.start_attempt(rollout_id)
    llm = endpoint.as_resource(rollout_id, retried.attempt.attempt_id)
    second = openai.OpenAI(base_url=llm.endpoint, api_key="not-a-secret", max_retries=0)
    await _chat(second, messages=[{"role": "user", "content": "Once more."}])
    other_id, other = await _rollout(store, endpoint)
    await _chat(other, messages=[{"role": "user", "content": "Hi."}])
    assert endpoint.served_calls(rollout_id, first) == 2
    assert endpoint.served_calls(rollout_id, retried.attempt.attempt_id) == 1
    assert endpoint.served_calls(other_id, "never-served") == 0
    assert endpoint.recorder is not None
    held = endpoint.recorder.counted_rollouts
    endpoint.forget_calls([rollout_id])
    assert endpoint.recorder.counted_rollouts == held - 1
    assert endpoint.served_calls(rollout_id, first) == 0
    assert endpoint.served_calls(other_id, (await store.query_attempts(other_id))[-1].attempt_id) == 1
    endpoint.forget_calls([other_id, "unknown-rollout"])
    assert endpoint.recorder.counted_rollouts == held - 2


async def test_streaming_answer_and_span(served: Any, tokenizer: Any) -> None:
    endpoint, sim, store = served
    rollout_id, client = await _rollout(store, endpoint)

    def stream() -> list[Any]:
        return list(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
            )
        )

    chunks = await asyncio.to_thread(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    await endpoint.flush()
    (call,) = reconstruct(await store.query_spans(rollout_id)).calls
    assert call.response_token_ids == list(sim.responses[-1].sequences[0].tokens)
    assert text == tokenizer.decode(call.response_token_ids).removesuffix("<|im_end|>")


async def test_tool_call_round_trip(served: Any, tokenizer: Any) -> None:
    endpoint, sim, store = served
    _, client = await _rollout(store, endpoint)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "guess",
                "description": "Guess a number",
                "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
            },
        }
    ]
    sim.script = ['<tool_call>\n{"name": "guess", "arguments": {"n": 512}}\n</tool_call>', "Found it: 512."]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Play."},
        {"role": "user", "content": "Find it."},
    ]
    first = await _chat(client, messages=messages, tools=tools)
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls
    assert call.function.name == "guess" and json.loads(call.function.arguments) == {"n": 512}
    assert "<tools>" in tokenizer.decode(sim.prompts[-1])
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "correct"},
    ]
    second = await _chat(client, messages=messages, tools=tools)
    assert second.choices[0].message.content == "Found it: 512."
    assert "<tool_response>\ncorrect\n</tool_response>" in tokenizer.decode(sim.prompts[-1])
    # token-in-token-out: the second prompt continues the first prompt + its sampled tokens
    first_sequence = first.model_extra["prompt_token_ids"] + first.choices[0].model_extra["token_ids"]
    assert second.model_extra["prompt_token_ids"][: len(first_sequence)] == first_sequence


SWAP_DEADLINE_S = 60.0
"""How long a version may take to be answered at all (a fraction of a second at normal load)."""


async def test_hot_swap_under_load_fails_nothing(served: Any) -> None:
    """Six clients hammer the endpoint while the weights change 0 -> 1 -> 2 -> 3: no call fails,
    each version is answered once swapped in, and a client's later call never gets older weights.
    Each swap waits until the version before it was answered (not a fixed time), so a loaded
    machine slows the test down instead of failing it."""
    endpoint, sim, store = served
    _, client = await _rollout(store, endpoint)
    stop = threading.Event()
    seen: list[list[Any]] = [[] for _ in range(6)]
    errors: list[BaseException] = []

    def hammer(versions: list[Any]) -> None:
        while not stop.is_set():
            try:
                answer = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Go"}], max_tokens=8
                )
                versions.append(answer.model_extra["weights_version"])
            except BaseException as exc:
                errors.append(exc)

    async def answered(version: int) -> None:
        deadline = asyncio.get_running_loop().time() + SWAP_DEADLINE_S
        while not errors and not any(version in versions for versions in seen):
            assert asyncio.get_running_loop().time() < deadline, f"version {version} never answered"
            await asyncio.sleep(0.01)

    workers = [threading.Thread(target=hammer, args=(versions,)) for versions in seen]
    for w in workers:
        w.start()
    try:
        await answered(0)
        for version in range(1, 4):
            endpoint.swap(sim, version)
            await answered(version)
    finally:
        stop.set()
        for w in workers:
            await asyncio.to_thread(w.join)
    endpoint.swap(sim, 0)
    assert not errors
    assert all(versions == sorted(versions) for versions in seen), seen
    assert {v for versions in seen for v in versions} == {0, 1, 2, 3}


async def test_samples_are_independent_without_seed(served: Any) -> None:
    endpoint, _, store = served
    _, client = await _rollout(store, endpoint)
    ask = {
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 24,
        "temperature": 1.0,
    }
    unseeded = [tuple((await _chat(client, **ask)).choices[0].model_extra["token_ids"]) for _ in range(6)]
    assert len(set(unseeded)) > 1
    seeded = {
        tuple((await _chat(client, seed=7, **ask)).choices[0].model_extra["token_ids"]) for _ in range(3)
    }
    assert len(seeded) == 1


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("malformed json", b"{not json", "valid JSON"),
    ("not an object", [1, 2], "JSON object"),
    ("messages not a list", {"messages": "hi"}, "'messages'"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("bad content", {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("temperature type", {"temperature": "hot"}, "temperature"),
    ("temperature range", {"temperature": 7}, "temperature"),
    ("top_p range", {"top_p": 0}, "top_p"),
    ("max_tokens", {"max_tokens": 0}, "max_tokens"),
    ("seed type", {"seed": "x"}, "seed"),
    ("stop type", {"stop": [1]}, "stop"),
    ("prompt over context", {"messages": [{"role": "user", "content": "word " * 5000}]}, "too long"),
    ("unknown model", {"model": "gpt-17"}, "gpt-17"),
]


@pytest.mark.parametrize(("case", "body", "says"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_input_is_a_400_and_serving_goes_on(served: Any, case: str, body: Any, says: str) -> None:
    endpoint, _, store = served
    _, client = await _rollout(store, endpoint)
    if isinstance(body, dict):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = str(client.base_url).rstrip("/") + "/chat/completions"
    async with httpx.AsyncClient() as http:
        reply = await http.post(url, content=content, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert says in reply.json()["error"]["message"]
    if case in ("malformed json", "not an object"):  # answered by this package in every mode: one shape
        assert reply.json()["error"] == {
            "message": reply.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    assert (await _chat(client, messages=[{"role": "user", "content": "still there?"}], max_tokens=4)).choices


def _ten_turns(client: openai.OpenAI) -> Iterator[None]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Let's talk."}]
    for turn in range(10):
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24)
        messages += [
            {"role": "assistant", "content": answer.choices[0].message.content},
            {"role": "user", "content": f"Turn {turn}: go on."},
        ]
        yield


@pytest.mark.parametrize("tito", [True, False])
async def test_token_in_token_out_keeps_one_sequence_under_drift(tito: bool, tokenizer: Any) -> None:
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(token_in_token_out=tito, default_max_tokens=24),
        store=store,
        sampling_client=_sampler(drift=1.0),
        base_model=MODEL,
        tokenizer=tokenizer,
    )
    try:
        rollout_id, client = await _rollout(store, endpoint)
        await asyncio.to_thread(lambda: list(_ten_turns(client)))
        await endpoint.flush()
        alignment = align_calls(reconstruct(await store.query_spans(rollout_id)).calls)
    finally:
        await endpoint.stop()
    if tito:
        assert len(alignment.sequences) == 1 and not alignment.drift
    else:
        assert alignment.drift and len(alignment.sequences) > 1


async def test_lean_server_skips_litellm_dispatch_unless_asked(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``litellm.acompletion`` costs more than the rest of the endpoint; the lean default skips it."""
    calls: list[str] = []
    real = litellm.acompletion

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["model"])
        return await real(*args, **kwargs)

    monkeypatch.setattr(litellm, "acompletion", counting)
    for dispatch in (False, True):
        store = LightningStoreThreaded(InMemoryLightningStore())
        endpoint = await start_endpoint(
            EndpointConfig(litellm_dispatch=dispatch, default_max_tokens=8),
            store=store,
            sampling_client=_sampler(),
            base_model=MODEL,
            tokenizer=tokenizer,
        )
        try:
            _, client = await _rollout(store, endpoint)
            answer = await _chat(client, messages=[{"role": "user", "content": "Hi"}])
            assert answer.choices[0].model_extra["token_ids"]
        finally:
            await endpoint.stop()
        assert len(calls) == int(dispatch)


async def test_what_the_endpoint_was_built_from_is_frozen_when_it_starts(tokenizer: Any) -> None:
    """A full collection on the serving path walks every unfrozen object of the process: 0.4-1.3 s
    here, which a 1-client window of ``benchmarks/endpoint.py`` read as 2-7 ms of CPU per call."""
    built = {"long-lived": True}
    built["self"] = built
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(), store=store, sampling_client=_sampler(), base_model=MODEL, tokenizer=tokenizer
    )
    try:
        assert not any(o is built for o in gc.get_objects())
    finally:
        await endpoint.stop()


async def test_a_lean_server_that_cannot_bind_closes_what_it_opened() -> None:
    """A taken port fails ``start`` with the span recorder's writer stopped and the loop closed
    (they were left pending: "Task was destroyed but it is pending"); the server can start again."""
    from agl_tinker.endpoint.lean_server import LeanServer
    from agl_tinker.endpoint.span_recorder import SpanRecorder

    recorder = SpanRecorder(InMemoryLightningStore())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        no_provider: Any = None  # /health asks no provider
        server = LeanServer(no_provider, "m", "m", recorder=recorder, port=taken.getsockname()[1])
        with pytest.raises(OSError):
            await server.start()
    with pytest.raises(RuntimeError, match="before start"):
        await recorder.flush()  # the writer was closed with the server
    server.port = 0
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.url}/health")).json()["status"] == "ok"
    finally:
        await server.stop()


async def test_a_proxy_server_that_fails_to_start_leaves_no_registration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its provider, span logger entry and recorder writer were left registered for the process."""
    from agl_tinker.endpoint import llmproxy
    from agl_tinker.endpoint.span_recorder import SpanRecorder

    recorder = SpanRecorder(InMemoryLightningStore())
    provider: Any = object()  # registered, never asked: nothing is served
    server = llmproxy.ProxyServer(
        provider,
        "agl-test/never",
        "never-served",
        store=LightningStoreThreaded(InMemoryLightningStore()),
        recorder=recorder,
    )

    async def refuse() -> None:
        raise OSError("address already in use")

    monkeypatch.setattr(server.proxy, "start", refuse)
    with pytest.raises(OSError):
        await server.start()
    assert "never-served" not in llmproxy._PROVIDERS
    assert "agl-test/never" not in llmproxy.ProxySpanLogger.recorders
    with pytest.raises(RuntimeError, match="before start"):
        await recorder.flush()
