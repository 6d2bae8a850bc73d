"""The Responses and Anthropic Messages APIs through the real ``openai`` and ``anthropic`` SDKs
(issue 32): same tokens, spans and token-in-token-out as chat completions, whichever API a turn
comes back through; context clamping; slash-free model aliases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from test_endpoint_bad_requests import Background, ScriptedSampler

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer
from agl_tinker.core.align import align_calls
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.endpoint.start import Endpoint, EndpointConfig, start_endpoint

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
ALIAS = "Qwen3-4B-Instruct-2507"
CALL = '<tool_call>\n{"name": "lookup", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
FUNCTION_TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
ANTHROPIC_TOOL = {
    "name": "lookup",
    "description": "Weather for a city.",
    "input_schema": FUNCTION_TOOL["parameters"],
}


class Rig:
    """One lean endpoint over a scripted sampler, on its own loop; each test sets the script."""

    def __init__(self) -> None:
        self.background = Background()
        self.tokenizer = get_tokenizer(MODEL)
        self.store = LightningStoreThreaded(InMemoryLightningStore())
        self.sampler = ScriptedSampler(self.tokenizer, ["Hello."])

        async def start() -> Endpoint:
            return await start_endpoint(
                EndpointConfig(max_context_tokens=512, default_max_tokens=64),
                store=self.store,
                sampling_client=self.sampler,
                base_model=MODEL,
                tokenizer=self.tokenizer,
            )

        self.endpoint = self.background.run(start())

    def script(self, *texts: str) -> None:
        self.sampler.texts, self.sampler.calls = list(texts), 0

    def rollout(self) -> tuple[str, str]:
        """A fresh rollout: its id and its base URL (without ``/v1``)."""
        attempted = self.background.run(self.store.start_rollout(input={"task": "t"}))
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        return rid, f"{self.endpoint.url}/rollout/{rid}/attempt/{aid}"

    def spans(self, rollout_id: str) -> list[Any]:
        self.background.run(self.endpoint.flush())
        return [
            s
            for s in self.background.run(self.store.query_spans(rollout_id))
            if s.name == S.LLM_CALL_SPAN_NAME
        ]

    def close(self) -> None:
        self.background.run(self.endpoint.stop())
        self.background.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.close()


def _one_sequence(rig: Rig, rollout_id: str, calls: int) -> list[Any]:
    spans = rig.spans(rollout_id)
    assert len(spans) == calls
    alignment = align_calls(reconstruct(spans).calls)
    assert len(alignment.sequences) == 1 and not alignment.drift, alignment
    return spans


def _openai(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="not-a-secret", max_retries=0)


# --- Responses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_responses_tool_episode_is_one_token_sequence(rig: Rig, stream: bool) -> None:
    rig.script(CALL, "Sunny in Paris.")
    rollout_id, base = rig.rollout()
    client = _openai(base)
    history: list[Any] = [
        {"role": "developer", "content": [{"type": "input_text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
    ]
    ask = {"model": ALIAS, "instructions": "You help.", "tools": [FUNCTION_TOOL], "store": False}
    ignored = {
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k",
        "parallel_tool_calls": False,
    }

    def respond(items: list[Any]) -> Any:
        if not stream:
            return client.responses.create(input=items, **ask, **ignored)
        events = list(client.responses.create(input=items, stream=True, **ask, **ignored))
        kinds = [e.type for e in events]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        assert "response.output_item.done" in kinds
        assert [e.sequence_number for e in events] == list(range(len(events)))
        return events[-1].response

    first = respond(history)
    (call,) = first.output
    assert call.type == "function_call" and call.name == "lookup"
    assert json.loads(call.arguments) == {"city": "Paris", "days": 2}
    assert (
        first.usage is not None and first.usage.output_tokens == len(rig.sampler.tokenizer.encode(CALL)) + 1
    )
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    second = respond(history)
    assert second.output_text == "Sunny in Paris." and second.status == "completed"

    spans = _one_sequence(rig, rollout_id, 2)
    assert all(s.attributes[S.AGL_API] == "responses" for s in spans)
    assert all(s.attributes[S.REQUEST_MODEL] == MODEL for s in spans)  # the alias is recorded as its name
    assert spans[1].attributes[S.AGL_PREFIX_LENGTH] > 0  # the first answer's tokens were reused
    messages = json.loads(spans[1].attributes[S.AGL_MESSAGES])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[3]["tool_call_id"] == call.call_id
    assert first.model_extra["token_ids"] == spans[0].attributes[S.RESPONSE_TOKEN_IDS]
    assert first.model_extra["weights_version"] == 0


def test_an_answer_given_through_chat_is_reused_through_responses(rig: Rig) -> None:
    rig.script(CALL, "Done.")
    rollout_id, base = rig.rollout()
    client = _openai(base)
    tools = [
        {"type": "function", "function": {k: FUNCTION_TOOL[k] for k in ("name", "description", "parameters")}}
    ]
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools
    )
    call = chat.choices[0].message.tool_calls[0]
    client.responses.create(
        model=MODEL,
        tools=[FUNCTION_TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.id,
                "name": call.function.name,
                "arguments": call.function.arguments,
            },
            {"type": "function_call_output", "call_id": call.id, "output": "sunny"},
        ],
    )
    spans = _one_sequence(rig, rollout_id, 2)
    assert [s.attributes[S.AGL_API] for s in spans] == ["chat.completions", "responses"]


def test_a_forbidden_catalog_is_not_offered_tools_on_any_api(rig: Rig) -> None:
    """``tool_choice: none`` drops the catalog from the prompt: every API's span then records no
    tool offered (chat recorded the declared count), so the tool-health metrics do not count the
    episode as offered tools and never calling them."""
    rig.script("Hi.", "Hi.", "Hi.")
    rollout_id, base = rig.rollout()
    client = _openai(base)
    chat_tools = [
        {"type": "function", "function": {k: FUNCTION_TOOL[k] for k in ("name", "description", "parameters")}}
    ]
    hi = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model=MODEL, messages=hi, tools=chat_tools, tool_choice="none")
    client.responses.create(model=MODEL, input="hi", tools=[FUNCTION_TOOL], tool_choice="none")
    _anthropic(base).messages.create(
        model=MODEL, max_tokens=16, messages=hi, tools=[ANTHROPIC_TOOL], tool_choice={"type": "none"}
    )
    spans = sorted(rig.spans(rollout_id), key=lambda s: s.sequence_id)
    assert [s.attributes[S.AGL_API] for s in spans] == ["chat.completions", "responses", "messages"]
    assert [s.attributes[S.AGL_TOOLS_OFFERED] for s in spans] == [0, 0, 0]


def test_responses_refuses_previous_response_id_and_hosted_tools_are_ignored_and_counted(rig: Rig) -> None:
    rig.script("Hi.")
    client = _openai(rig.endpoint.url)
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
    rig.endpoint.span_metrics()
    answer = client.responses.create(
        model=MODEL,
        input="hi",
        tools=[{"type": "web_search"}, {"type": "namespace", "name": "ns", "tools": []}],
    )
    assert answer.output_text == "Hi."
    assert rig.endpoint.span_metrics()["endpoint/tools_ignored"] == 2


def test_responses_cut_for_length_is_incomplete(rig: Rig) -> None:
    rig.script("one two three four five six seven eight")
    answer = _openai(rig.endpoint.url).responses.create(model=MODEL, input="count", max_output_tokens=3)
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"


# --- Anthropic Messages ------------------------------------------------------------------------


def _anthropic(base: str, **auth: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, max_retries=0, **(auth or {"api_key": "not-a-secret"}))


@pytest.mark.parametrize("stream", [False, True])
def test_messages_tool_episode_is_one_token_sequence(rig: Rig, stream: bool) -> None:
    rig.script(CALL, "Sunny in Paris.")
    rollout_id, base = rig.rollout()
    client = _anthropic(base)
    system = [{"type": "text", "text": "You help.", "cache_control": {"type": "ephemeral"}}]
    history: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]

    def ask(messages: list[Any]) -> Any:
        kwargs = {
            "model": ALIAS,
            "max_tokens": 64,
            "system": system,
            "tools": [ANTHROPIC_TOOL],
            "messages": messages,
        }
        if not stream:
            return client.messages.create(**kwargs, metadata={"user_id": "u"})
        with client.messages.stream(**kwargs) as events:
            return events.get_final_message()

    first = ask(history)
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.input == {"city": "Paris", "days": 2}
    history += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "sunny", "is_error": False}
            ],
        },
    ]
    second = ask(history)
    assert second.content[0].text == "Sunny in Paris." and second.stop_reason == "end_turn"
    spans = _one_sequence(rig, rollout_id, 2)
    assert all(s.attributes[S.AGL_API] == "messages" for s in spans)
    assert spans[0].attributes[S.AGL_TOOLS_OFFERED] == 1


def test_messages_accepts_both_auth_headers_betas_and_head(rig: Rig) -> None:
    rig.script("Hi.")
    for auth in ({"api_key": "k"}, {"auth_token": "k"}):
        client = _anthropic(rig.endpoint.url, **auth)
        answer = client.beta.messages.create(
            model=MODEL,
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            betas=["context-management-2025-06-27"],
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
        assert answer.content[0].text == "Hi."
    assert httpx.head(rig.endpoint.url + "/").status_code == 200


def test_messages_errors_are_anthropic_shaped(rig: Rig) -> None:
    client = _anthropic(rig.endpoint.url)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "tool", "content": "x"}])
    assert caught.value.body["type"] == "error" and "role" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError, match="not served"):
        client.messages.create(
            model="claude-nope", max_tokens=16, messages=[{"role": "user", "content": "x"}]
        )


# --- context and names -------------------------------------------------------------------------


def test_max_tokens_past_the_context_is_clamped_and_counted(rig: Rig) -> None:
    rig.script("word " * 600)
    client = _openai(rig.endpoint.url)
    rig.endpoint.span_metrics()
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "go"}], max_tokens=32000
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens + answer.usage.completion_tokens == 512
    assert rig.endpoint.span_metrics()["endpoint/max_tokens_clamped"] == 1
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "go " * 600}])
    assert "512" in str(caught.value) and "prompt tokens" in str(caught.value)


def test_strict_context_keeps_the_400(rig: Rig) -> None:
    async def start() -> Endpoint:
        return await start_endpoint(
            EndpointConfig(max_context_tokens=512, strict_context=True),
            store=rig.store,
            sampling_client=rig.sampler,
            base_model=MODEL,
            tokenizer=rig.tokenizer,
        )

    endpoint = rig.background.run(start())
    try:
        with pytest.raises(openai.BadRequestError, match="too long"):
            _openai(endpoint.url).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "go"}], max_tokens=32000
            )
    finally:
        rig.background.run(endpoint.stop())


def test_slash_free_alias_is_listed_and_unknown_names_are_refused(rig: Rig) -> None:
    client = _openai(rig.endpoint.url)
    assert {MODEL, ALIAS} <= {m.id for m in client.models.list()}
    with pytest.raises(openai.BadRequestError, match="not served"):
        client.responses.create(model="Qwen3", input="hi")
