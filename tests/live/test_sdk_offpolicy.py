"""The real tinker SDK on the off-policy contracts: recorded sequences named by provenance
(``stable_reinforce``), the other documented RL losses with ``loss_fn_config``, in-flight clients.

Runs against the wire simulator by default and against real Tinker with ``--live``; exact
simulator facts (which weights version served a sample, the loss's value) are guarded by
``target.is_sim``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import tinker
from tinker import types

from .conftest import Target
from .helpers import chat_prompt, rl_datum, with_sampled_provenance

pytestmark = pytest.mark.live

PARAMS = types.SamplingParams(max_tokens=16, temperature=1.0, seed=11)
ADAM = types.AdamParams(learning_rate=0.05)


@pytest.fixture(scope="module")
def training(service: tinker.ServiceClient, target: Target) -> Any:
    return service.create_lora_training_client(target.model, rank=target.rank, seed=2).result()


def _reinforce_datum(prompt: types.ModelInput, seq: Any, advantage: float) -> types.Datum:
    """``rl_datum`` without the sampler's logprobs (the recorded ones are used), with provenance."""
    datum = rl_datum(prompt, seq, advantage)
    inputs = {k: v for k, v in datum.loss_fn_inputs.items() if k != "logprobs"}
    return with_sampled_provenance(dataclasses.replace(datum, loss_fn_inputs=inputs), prompt, seq)


def test_stable_reinforce_trains_sequences_recorded_in_this_session(training: Any, target: Target) -> None:
    prompt = chat_prompt(target.model, "Say you are 617")
    sampler = training.save_weights_and_get_sampling_client(record_stability_info=True).result()
    response = sampler.sample(prompt, 2, PARAMS).result()
    assert len({seq.sequence_id for seq in response.sequences}) == 2
    data = [_reinforce_datum(prompt, seq, 1.0) for seq in response.sequences]
    out = training.forward_backward(data, "stable_reinforce", {"kl_coeff": 0.01}).result()
    assert len(out.loss_fn_outputs) == 2
    if target.is_sim:  # on policy: the loss is -sum(p * A) over the sampled tokens
        expected = -sum(
            float(o["logprobs"].to_numpy()[prompt.length - 1 :].sum()) for o in out.loss_fn_outputs
        )
        assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-5)
    training.optim_step(ADAM).result()


def test_stable_reinforce_refuses_an_unknown_sequence_id(training: Any, target: Target) -> None:
    prompt = chat_prompt(target.model, "Say you are 617")
    sampler = training.save_weights_and_get_sampling_client(record_stability_info=True).result()
    seq = sampler.sample(prompt, 1, PARAMS).result().sequences[0]
    datum = _reinforce_datum(prompt, dataclasses.replace(seq, sequence_id="never-sampled"), 1.0)
    with pytest.raises(tinker.TinkerError) as failure:
        training.forward_backward([datum], "stable_reinforce").result()
    if target.is_sim:
        assert "unknown or expired" in str(failure.value)


def test_a_sequence_of_another_session_is_refused(
    service: tinker.ServiceClient, training: Any, target: Target
) -> None:
    prompt = chat_prompt(target.model, "Say you are 617")
    other_service = target.service_client()
    try:
        other = other_service.create_lora_training_client(target.model, rank=target.rank, seed=2).result()
        sampler = other.save_weights_and_get_sampling_client(record_stability_info=True).result()
        seq = sampler.sample(prompt, 1, PARAMS).result().sequences[0]
        other.forward_backward(
            [_reinforce_datum(prompt, seq, 1.0)], "stable_reinforce"
        ).result()  # its own: fine
        with pytest.raises(tinker.TinkerError):
            training.forward_backward([_reinforce_datum(prompt, seq, 1.0)], "stable_reinforce").result()
    finally:
        other_service.close("success").result()


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [
        ("cispo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
        ("dro", {"beta": 0.05}),
    ],
)
def test_documented_rl_losses_take_their_config(
    training: Any, target: Target, loss_fn: str, config: Any
) -> None:
    prompt = chat_prompt(target.model, "Say you are 617")
    sampler = training.save_weights_and_get_sampling_client().result()
    data = [rl_datum(prompt, seq, 1.0) for seq in sampler.sample(prompt, 2, PARAMS).result().sequences]
    out = training.forward(data, loss_fn, config).result()
    assert len(out.loss_fn_outputs) == 2


def test_an_inflight_save_reaches_existing_clients(training: Any, target: Target) -> None:
    prompt = chat_prompt(target.model, "Say you are 617")
    first = training.save_weights_and_get_sampling_client(
        kind="inflight", record_stability_info=True
    ).result()
    before = first.sample(prompt, 1, PARAMS).result().sequences[0]
    training.forward_backward([rl_datum(prompt, before, 1.0)], "importance_sampling").result()
    training.optim_step(ADAM).result()
    second = training.save_weights_and_get_sampling_client(
        kind="inflight", record_stability_info=True
    ).result()
    after = first.sample(prompt, 1, PARAMS).result().sequences[0]
    fresh = second.sample(prompt, 1, PARAMS).result().sequences[0]
    if target.is_sim:
        ledger = target.server.server.service.sim._runtime.stability  # type: ignore[union-attr]
        versions = [ledger.peek(s.sequence_id).weights_version for s in (before, after, fresh)]
        assert versions[1] == versions[2] > versions[0]  # the existing client adopted the new save
    # samples of both clients can be trained on: their sequences are recorded
    data = [_reinforce_datum(prompt, s, 1.0) for s in (after, fresh)]
    training.forward(data, "stable_reinforce").result()
