"""Several policies: configuration and validation, the per-policy batch view, unowned calls,
and the endpoint serving each policy from its own sampling client, swapped one at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import chz
import pytest
import pytest_asyncio
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from openai import AsyncOpenAI, BadRequestError

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer, service_client
from agl_tinker.core.reconstruct import ReconstructOptions
from agl_tinker.core.rewards import RewardOptions
from agl_tinker.core.trajectory import rollout_trajectory
from agl_tinker.endpoint.start import EndpointConfig, PolicyServing, start_policy_endpoint
from agl_tinker.loop.config import ConfigError, PolicyConfig, TrainConfig
from agl_tinker.loop.policy import unowned_calls

# Our loop calls the SDK through its non-deprecated methods (the `*_async` spellings are
# deprecated; see agl_tinker/tinker_retry.py): a FutureWarning here is a regression.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


def _config(tmp_path: Any, **fields: Any) -> TrainConfig:
    return TrainConfig(log_path=str(tmp_path), **fields)


def test_no_policies_is_the_single_policy_run(tmp_path: Any) -> None:
    config = _config(tmp_path)
    assert config.policies == {}


def test_policy_settings_fall_back_to_the_run_and_select_exact_model_names(tmp_path: Any) -> None:
    config = _config(
        tmp_path,
        lora_rank=16,
        learning_rate=1e-4,
        policies={
            "player": PolicyConfig(lora_rank=4, reward_key="player"),
            "answerer": PolicyConfig(models=("oracle", "judge"), learning_rate=0.5, num_substeps=2),
        },
    )
    player, answerer = config.policy_settings("player"), config.policy_settings("answerer")
    assert (player.models, player.lora_rank, player.learning_rate, player.num_substeps) == (
        ("player",),
        4,
        1e-4,
        1,
    )
    assert player.reward_key == "player" and player.model_name == MODEL
    assert (answerer.models, answerer.lora_rank, answerer.learning_rate, answerer.num_substeps) == (
        ("oracle", "judge"),
        16,
        0.5,
        2,
    )
    import re

    assert re.search(answerer.model_match, "judge") and re.search(answerer.model_match, "oracle")
    assert not re.search(answerer.model_match, "judge2") and not re.search(player.model_match, "xplayer")


def test_several_policies_take_a_kl_penalty(tmp_path: Any) -> None:
    """Each policy is penalised against its own base model (it used to be refused)."""
    _config(tmp_path, policies={"a": PolicyConfig(), "b": PolicyConfig()}, kl_penalty_coef=0.1)


def test_several_policies_train_streamed_and_asynchronously(tmp_path: Any) -> None:
    """Every schedule trains a list of policies (these used to be refused)."""
    from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

    policies = {"a": PolicyConfig(), "b": PolicyConfig()}
    stream = StreamMinibatchConfig(groups_per_batch=8, num_minibatches=2)
    _config(tmp_path, policies=policies, batch_size=8, stream_minibatch_config=stream)  # built: checked
    asynchronous = AsyncConfig(max_steps_off_policy=1, groups_per_batch=8)
    _config(tmp_path, policies=policies, batch_size=8, async_config=asynchronous)  # built: checked


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"policies": {"a": PolicyConfig(models=("m",)), "b": PolicyConfig(models=("m",))}}, "both policies"),
        ({"policies": {"a": PolicyConfig(), "b": PolicyConfig(models=("a",))}}, "both policies"),
        ({"policies": {"a b": PolicyConfig()}}, "policy name"),
        ({"policies": {"a": PolicyConfig(models=("",))}}, r"empty name"),
        ({"policies": {"a": PolicyConfig()}, "agent_match": "x"}, "agent_match cannot be combined"),
        ({"policies": {"a": PolicyConfig()}, "model_aliases": ("x",)}, "model_aliases cannot"),
        ({"policies": {"a": PolicyConfig()}, "endpoint_mode": "proxy"}, "endpoint_mode='lean'"),
    ],
)
def test_bad_policies_are_refused_naming_the_field(tmp_path: Any, fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(tmp_path, **fields)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"lora_rank": 0}, r"PolicyConfig\.lora_rank must be >= 1"),
        ({"learning_rate": 0.0}, r"PolicyConfig\.learning_rate must be > 0"),
        ({"agent_match": "("}, r"PolicyConfig\.agent_match is not a valid regular expression"),
        ({"reward_key": ""}, r"PolicyConfig\.reward_key"),
        ({"modles": ("a",)}, r"PolicyConfig has no setting 'modles': did you mean 'models'\?"),
    ],
)
def test_a_bad_policy_field_is_refused_when_the_policy_is_built(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PolicyConfig(**fields)


def test_command_line_sets_policies_and_refuses_unknown_fields(tmp_path: Any) -> None:
    from agl_tinker.loop.config import bind_cookbook_types

    bind_cookbook_types()
    blueprint = chz.Blueprint(TrainConfig).apply({"log_path": str(tmp_path)})
    config = blueprint.make_from_argv(["policies.a.lora_rank=4", "policies.b.models=x,y"])
    assert config.policies["a"].lora_rank == 4 and config.policies["b"].models == ("x", "y")
    with pytest.raises(Exception, match="bogus"):
        blueprint.make_from_argv(["policies.a.bogus=1"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[tuple[Any, Any]]:
    store = LightningStoreThreaded(InMemoryLightningStore())
    service = service_client()
    tokenizer = get_tokenizer(MODEL)
    policies = {
        name: PolicyServing(
            sampling_client=service.create_sampling_client(base_model=MODEL).result(),
            base_model=MODEL,
            tokenizer=tokenizer,
            models=models,
        )
        for name, models in {"speaker": ("speaker",), "checker": ("checker", "judge")}.items()
    }
    endpoint = await start_policy_endpoint(
        EndpointConfig(default_max_tokens=24), store=store, policies=policies
    )
    yield endpoint, store
    await endpoint.stop()


async def _ask(client: AsyncOpenAI, model: str, agent: str) -> Any:
    return await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say you are 7."}],
        extra_headers={S.AGENT_NAME_HEADER: agent},
    )


@_MODULE_LOOP
async def test_each_model_name_is_served_by_its_policy_and_swapped_alone(served: Any) -> None:
    endpoint, _ = served
    assert set(endpoint.policies) == {"speaker", "checker"}
    resource = endpoint.as_resource()
    assert resource.model == "speaker"  # the first policy's name; others are asked for by name
    client = AsyncOpenAI(base_url=resource.endpoint, api_key="unused")
    assert {m.id for m in (await client.models.list()).data} == {"speaker", "checker", "judge"}
    before = [(await _ask(client, m, m)).model_extra["weights_version"] for m in ("speaker", "judge")]
    assert before == [0, 0]
    service = service_client()
    endpoint.swap(service.create_sampling_client(base_model=MODEL).result(), 7, policy="checker")
    after = [
        (await _ask(client, m, m)).model_extra["weights_version"] for m in ("speaker", "checker", "judge")
    ]
    assert after == [0, 7, 7]
    assert endpoint.policies["checker"].policy.version == 7 and endpoint.weights_version == 0
    with pytest.raises(BadRequestError, match="not served"):
        await _ask(client, MODEL, "other")  # no policy owns the base name: refused, never sampled


@_MODULE_LOOP
async def test_each_policy_reads_only_its_calls_and_unowned_calls_are_counted(served: Any) -> None:
    endpoint, store = served
    rollout = await store.start_rollout(input={})
    llm = endpoint.as_resource(rollout.rollout_id, rollout.attempt.attempt_id)
    client = AsyncOpenAI(base_url=llm.get_base_url(), api_key="unused")
    await _ask(client, "speaker", "speaker")
    await _ask(client, "judge", "checker")
    await _ask(client, "checker", "intruder")
    await endpoint.flush()
    spans = list(await store.query_spans(rollout.rollout_id))

    spans.append(_reward_span(rollout.rollout_id, rollout.attempt.attempt_id, spans))
    options = {
        "speaker": ReconstructOptions(model_match="^(?:speaker)$"),
        "checker": ReconstructOptions(model_match="^(?:checker|judge)$", agent_match="^checker$"),
    }
    results = {
        name: rollout_trajectory(
            spans, status="succeeded", reconstruct_options=opts, reward_options=RewardOptions(dimension=name)
        )
        for name, opts in options.items()
    }
    assert [c.model for c in results["speaker"].reconstruction.calls] == ["speaker"]
    assert [c.agent_name for c in results["checker"].reconstruction.calls] == ["checker"]
    assert unowned_calls(results) == 1  # the intruder's call: sampled by checker, trained by none
    assert results["speaker"].attribution.episode_return == 1.0
    assert results["checker"].attribution.episode_return == -1.0


def _reward_span(rollout_id: str, attempt_id: str, spans: list[Any]) -> Any:
    """An ``emit_reward({"team": 0, "speaker": 1, "checker": -1}, primary_key="team")`` span."""
    from agentlightning.types import Span

    last = max(spans, key=lambda s: s.end_time or 0.0)
    attributes = S.reward_attributes(0.0, name="team", speaker=1.0, checker=-1.0)
    return Span.from_attributes(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=last.sequence_id + 1,
        name=S.REWARD_SPAN_NAME,
        attributes=attributes,
        start_time=(last.end_time or 0.0) + 1.0,
        end_time=(last.end_time or 0.0) + 1.0,
    )
