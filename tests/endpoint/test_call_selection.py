"""Which calls train: agent names (``X-Agent-Name``) and requested model names reach the spans and
select calls; tool-call health counts tool calls and tool-less episodes, overall and per agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from openai import AsyncOpenAI, BadRequestError

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.core.reconstruct import ReconstructOptions, reconstruct
from agl_tinker.core.tool_health import tool_health_metrics
from agl_tinker.endpoint.start import EndpointConfig, start_endpoint
from agl_tinker.loop.config import ConfigError, TrainConfig

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
# the async tests share the module-scoped endpoint fixture, so they share its event loop
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[tuple[Any, Any]]:
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(default_max_tokens=48, model_aliases=("player", "answerer")),
        store=store,
        sampling_client=service_client().create_sampling_client(base_model=MODEL).result(),
        base_model=MODEL,
        tokenizer=get_tokenizer(MODEL),
    )
    yield endpoint, store
    await endpoint.stop()


async def _episode(served: tuple[Any, Any], turns: list[tuple[str | None, str, bool]]) -> list[Any]:
    """One rollout whose calls are ``(agent header, model, offer tools)``; returns its spans."""
    endpoint, store = served
    rollout = await store.start_rollout(input={})
    llm = endpoint.as_resource(rollout.rollout_id, rollout.attempt.attempt_id)
    for agent, model, offer_tools in turns:
        headers = {S.AGENT_NAME_HEADER: agent} if agent else {}
        client = AsyncOpenAI(base_url=llm.get_base_url(), api_key="unused", default_headers=headers)
        extra: dict[str, Any] = {"tools": [SEARCH]} if offer_tools else {}
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Search for a dog."}], **extra
        )
    await endpoint.flush()
    return list(await store.query_spans(rollout.rollout_id))


@_MODULE_LOOP
async def test_agent_header_and_requested_model_are_recorded_and_select_calls(served: Any) -> None:
    spans = await _episode(
        served, [("player", "player", True), ("answerer", "answerer", False), (None, MODEL, False)]
    )
    everything = reconstruct(spans)
    assert [c.agent_name for c in everything.calls] == ["player", "answerer", None]
    assert [c.model for c in everything.calls] == ["player", "answerer", MODEL]
    assert [c.attributes[S.AGL_TOOLS_OFFERED] for c in everything.calls] == [1, 0, 0]
    by_agent = reconstruct(spans, ReconstructOptions(agent_match="^player$"))
    assert [c.agent_name for c in by_agent.calls] == ["player"]
    assert by_agent.metrics["filtered_calls"] == 2
    by_model = reconstruct(spans, ReconstructOptions(model_match="^answerer$"))
    assert [c.model for c in by_model.calls] == ["answerer"]


@_MODULE_LOOP
async def test_unknown_model_name_is_refused(served: Any) -> None:
    endpoint, _ = served
    client = AsyncOpenAI(base_url=endpoint.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError, match="not served"):
        await client.chat.completions.create(model="critic", messages=[{"role": "user", "content": "hi"}])


@_MODULE_LOOP
async def test_tool_health_counts_calls_and_tool_less_episodes_per_agent(served: Any) -> None:
    episodes = []
    for _ in range(30):  # until one episode called the tool and one did not
        rec = reconstruct(
            await _episode(served, [("player", "player", True), ("answerer", "answerer", False)])
        )
        episodes.append(rec)
        called = [sum(len((c.completion or {}).get("tool_calls") or []) for c in r.calls) for r in episodes]
        if any(called) and not all(called):
            break
    else:
        pytest.fail(f"30 episodes never mixed tool use and none: {called}")
    metrics = tool_health_metrics(episodes)
    n, with_calls = len(episodes), sum(1 for x in called if x)
    assert metrics["tools/calls_per_episode"] == pytest.approx(sum(called) / n)
    assert metrics["tools/offered_episodes"] == n
    assert metrics["tools/no_call_episodes"] == n - with_calls
    assert metrics["tools/no_call_frac"] == pytest.approx((n - with_calls) / n)
    assert metrics["tools/agent/player/no_call_episodes"] == n - with_calls
    # The answerer was never offered a tool: its episodes are not "tool-less" ones.
    assert metrics["tools/agent/answerer/offered_episodes"] == 0
    assert metrics["tools/agent/answerer/no_call_frac"] == 0.0


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"agent_match": "("}, "agent_match"),
        ({"model_match": "[a-"}, "model_match"),
        ({"model_aliases": ("player",), "endpoint_mode": "proxy"}, "model_aliases"),
    ],
)
def test_bad_selection_config_names_the_field(tmp_path: Any, fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(log_path=str(tmp_path), **fields)


def test_tool_health_sums_parse_failures_per_agent() -> None:
    from spanfactory import CallSpec, call_spans

    from agl_tinker.core.tool_health import PARSE_FAILURES_KEY

    spans = []
    for i, (agent, failures) in enumerate([("player", 2), ("answerer", 0), ("player", 1)]):
        call = CallSpec(
            prompt=[1, 2, 3 + i],
            response=[4, 5],
            logprobs=[-0.1, -0.2],
            start=float(i),
            end=i + 0.5,
            response_id=f"chatcmpl-{i}",
            agent_name=agent,
            extra={PARSE_FAILURES_KEY: failures, S.AGL_TOOLS_OFFERED: 1},
        )
        spans += call_spans(
            call, "agl", span_id=f"{i:016x}", rollout_id="ro-1", attempt_id="at-1", sequence_id=i
        )
    metrics = tool_health_metrics([reconstruct(spans)])
    assert metrics["tools/parse_failures"] == 3
    assert metrics["tools/agent/player/parse_failures"] == 3
    assert metrics["tools/agent/answerer/parse_failures"] == 0
    assert metrics["tools/no_call_episodes"] == 1
