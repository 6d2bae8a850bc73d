"""StableReinforce from an ordinary agent, below the loop: an ``openai`` multi-turn agent talks to the
endpoint over a sampler that records stability info; its spans are reconstructed, its group becomes
datums with provenance (``group_datums``), and the simulator trains them with ``stable_reinforce``
after checking every run's claim against what it recorded. A call whose sample was not recorded
leaves its datum out (counted) when the loss needs ids."""

from __future__ import annotations

import asyncio
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import openai
import pytest
import tinker
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from agentlightning.types import Span

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer
from agl_tinker.core.trajectory import rollout_trajectory
from agl_tinker.endpoint.start import EndpointConfig, start_endpoint
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.datums import group_datums, with_provenance
from agl_tinker.loop.step_trainer import BusyClock, Learner, StepTrainer
from fakes.tinker import ServiceClient, SimConfig

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def _agent(client: openai.OpenAI) -> None:
    """An ordinary three-turn chat agent."""
    messages: list[Any] = [{"role": "user", "content": "Say you are 617"}]
    for turn in range(3):
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
        messages += [
            {"role": "assistant", "content": answer.choices[0].message.content},
            {"role": "user", "content": f"Turn {turn}: say it again."},
        ]


def _reward(rollout_id: str, attempt_id: str, spans: list[Any], value: float) -> Span:
    last = max(spans, key=lambda s: s.end_time or 0.0)
    return Span.from_attributes(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=last.sequence_id + 1,
        name=S.REWARD_SPAN_NAME,
        attributes=S.reward_attributes(value),
        start_time=(last.end_time or 0.0) + 1.0,
        end_time=(last.end_time or 0.0) + 1.0,
    )


async def _group(training: Any, *, record: list[bool]) -> list[Any]:
    """One group: a rollout per entry of ``record`` (whether its sampler records stability info)."""
    store = LightningStoreThreaded(InMemoryLightningStore())
    recording = training.save_weights_and_get_sampling_client(record_stability_info=True).result()
    plain = training.save_weights_and_get_sampling_client().result()
    endpoint = await start_endpoint(
        EndpointConfig(default_max_tokens=16),
        store=store,
        sampling_client=recording,
        base_model=MODEL,
        tokenizer=get_tokenizer(MODEL),
        records_stability_info=True,
    )
    rollouts = []
    try:
        for i, records in enumerate(record):
            endpoint.swap(recording if records else plain, version=0, records_stability_info=records)
            attempted = await store.start_rollout(input={"task": "t"})
            llm = endpoint.as_resource(attempted.rollout_id, attempted.attempt.attempt_id)
            client = openai.OpenAI(base_url=llm.endpoint, api_key="unused", max_retries=0)
            await asyncio.to_thread(_agent, client)
            await endpoint.flush()
            spans = list(await store.query_spans(attempted.rollout_id))
            spans.append(_reward(attempted.rollout_id, attempted.attempt.attempt_id, spans, float(i)))
            rollouts.append(rollout_trajectory(spans, status="succeeded"))
    finally:
        await endpoint.stop()
    return rollouts


def _without_mask(datum: tinker.Datum) -> tinker.Datum:
    """What the loop must send: the cookbook's ``mask`` removed, provenance kept."""
    return dataclasses.replace(
        datum, loss_fn_inputs={k: v for k, v in datum.loss_fn_inputs.items() if k != "mask"}
    )


def _config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    return TrainConfig(
        log_path=str(tmp_path / "log"), batch_size=1, group_size=3, min_valid_per_group=2, **overrides
    )


async def test_stable_reinforce_trains_an_ordinary_agents_episodes(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    service = ServiceClient(config=SimConfig(root_dir=tmp_path))
    training = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    rollouts = await _group(training, record=[True, True, True])
    for rollout in rollouts:  # every call recorded its sampled sequence
        calls = rollout.reconstruction.calls
        assert len(calls) == 3 and all(c.sampled_sequence_id for c in calls)
        assert len({c.sampled_sequence_id for c in calls}) == 3
    made = await group_datums([rollouts], _config(tmp_path), kl_reference=None)
    assert made.unrecorded == 0 and len(made.data) == 3  # a three-turn episode is one datum
    for datum in made.data:
        names = {run.sequence_id for run in datum.loss_fn_input_spans or []}
        assert len(names) == 3  # its runs name each of its calls
    data = [_without_mask(d) for d in made.data]
    out = training.forward_backward(data, "stable_reinforce", {"kl_coeff": 0.01}).result()
    assert len(out.loss_fn_outputs) == 3
    training.optim_step(tinker.AdamParams(learning_rate=0.05)).result()
    # the same datums one step later: still named, now off policy
    training.forward(data, "stable_reinforce").result()


async def test_a_datum_whose_sample_was_not_recorded_is_left_out_and_counted(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    service = ServiceClient(config=SimConfig(root_dir=tmp_path))
    training = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    rollouts = await _group(training, record=[True, False, True])
    assert all(c.sampled_sequence_id is None for c in rollouts[1].reconstruction.calls)
    made = await group_datums([rollouts], _config(tmp_path), kl_reference=None)
    assert made.unrecorded == 0 and len(made.data) == 3  # importance_sampling needs no ids
    assert [d.loss_fn_input_spans is None for d in made.data] == [False, True, False]
    attached = with_provenance(made.data, made.valid, needed=True)
    needed, unrecorded = attached.data, attached.unrecorded
    assert unrecorded == 1 and len(needed) == 2
    out = training.forward_backward([_without_mask(d) for d in needed], "stable_reinforce").result()
    assert len(out.loss_fn_outputs) == 2
    with pytest.raises(tinker.BadRequestError):  # the left-out datum could not be trained
        training.forward([_without_mask(made.data[1])], "stable_reinforce").result()
    # gspo: the sequence ratio runs over the sampled (trained) tokens
    gspo = await group_datums([rollouts], _config(tmp_path, loss_fn="gspo"), kl_reference=None)
    for datum in gspo.data:
        inputs = datum.loss_fn_inputs
        assert inputs["sequence_ratio_mask"].to_numpy().tolist() == inputs["mask"].to_numpy().tolist()
    training.forward([_without_mask(d) for d in gspo.data], "gspo").result()


async def test_ids_recorded_before_a_resume_are_left_out_and_counted_never_sent(tmp_path: Path) -> None:
    """A group sampled by an earlier process (weights version 0) reaches a run resumed at step 2 in a
    new session: its ids are unknown to the new session, so its datums are left out and counted
    (``datums/expired``), the step trains nothing and does not fail."""
    warnings.simplefilter("ignore", FutureWarning)
    before = ServiceClient(config=SimConfig(root_dir=tmp_path))
    training = before.create_lora_training_client(MODEL, rank=4, seed=0).result()
    rollouts = await _group(training, record=[True, True, True])
    config = _config(tmp_path, loss_fn="stable_reinforce")
    same_session = await group_datums([rollouts], config, kl_reference=None, session_start=0)
    assert len(same_session.data) == 3 and same_session.expired == 0

    after = ServiceClient(config=SimConfig(root_dir=tmp_path))  # the restarted process's session
    resumed = after.create_lora_training_client(MODEL, rank=4, seed=0).result()
    with pytest.raises(tinker.BadRequestError, match="unknown or expired"):  # what is avoided
        resumed.forward([_without_mask(same_session.data[0])], "stable_reinforce").result()
    made = await group_datums([rollouts], config, kl_reference=None, session_start=2)
    assert made.data == [] and made.expired == 3 and made.unrecorded == 0
    # the other losses keep the datums, without the old session's provenance
    plain = await group_datums([rollouts], _config(tmp_path), kl_reference=None, session_start=2)
    assert len(plain.data) == 3 and all(d.loss_fn_input_spans is None for d in plain.data)

    learner = Learner(None, resumed, 0.05, 1, records_stability_info=True, session_start=2)
    trainer = StepTrainer(learner, config, BusyClock(), 1, None)
    await trainer.add(7, rollouts)
    await trainer.finish()
    metrics = trainer.metrics()
    assert metrics["datums/expired"] == 3 and metrics["train/datums"] == 0 and metrics["optim/steps"] == 0
    assert trainer.trained == set()  # the group is excluded, not trained
