"""agl-tinker's own live mode: ``agl_tinker.backend`` reaches the target through the SDK, and the
endpoint serves a live ``SamplingClient`` to an ordinary OpenAI client."""

from __future__ import annotations

import asyncio

import openai
import pytest
import tinker
from agentlightning.store.memory import InMemoryLightningStore

from agl_tinker.backend import BackendError, get_tokenizer, service_client
from agl_tinker.endpoint.start import EndpointConfig, start_endpoint

from .conftest import Target

pytestmark = [pytest.mark.live, pytest.mark.filterwarnings("ignore::FutureWarning")]


def test_backend_live_uses_the_sdk_at_tinker_base_url(live_env: Target) -> None:
    client = service_client()
    assert isinstance(client, tinker.ServiceClient)
    try:
        training = client.create_lora_training_client(live_env.model, rank=live_env.rank).result()
        assert training.get_info().model_data.model_name == live_env.model
    finally:
        client.close("success").result()


def test_backend_live_without_a_key_says_how_to_go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(BackendError, match="sim-server"):
        service_client("live")


async def test_endpoint_serves_a_live_sampling_client(service: tinker.ServiceClient, target: Target) -> None:
    sampler = await service.create_sampling_client(base_model=target.model)
    endpoint = await start_endpoint(
        EndpointConfig(max_context_tokens=4096, default_max_tokens=32),
        store=InMemoryLightningStore(),
        sampling_client=sampler,
        base_model=target.model,
        tokenizer=get_tokenizer(target.model),
    )
    try:
        client = openai.OpenAI(base_url=endpoint.url + "/v1", api_key="not-a-secret", max_retries=0)
        answer = await asyncio.to_thread(
            client.chat.completions.create,
            model=endpoint.model_name,
            messages=[{"role": "user", "content": "Say hello."}],
            logprobs=True,
        )
    finally:
        await endpoint.stop()
    choice = answer.choices[0]
    assert choice.message.content
    extra = choice.model_extra or {}
    assert extra["token_ids"] and len(extra["token_logprobs"]) == len(extra["token_ids"])
    assert all(lp <= 0.0 for lp in extra["token_logprobs"])
