"""The simulator's off-policy contracts: in-flight clients, recorded sequences, provenance, context."""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pytest
import tinker
from hypothesis import given
from hypothesis import strategies as st
from tinker import types
from tinker_cookbook.capture.proxy.app import _is_context_overflow

from fakes.tinker import ServiceClient, SimConfig
from fakes.tinker.catalog import resolve
from fakes.tinker.datums import check_context, check_sample_budget
from fakes.tinker.inflight import InflightClientWeights, InflightTarget

BASE = "Qwen/Qwen3-4B-Instruct-2507"
HELLO = "<|im_start|>user\nSay you are 617<|im_end|>\n<|im_start|>assistant\n"
PARAMS = types.SamplingParams(max_tokens=24, seed=3)
ADAM = types.AdamParams(learning_rate=0.05)


def _service(tmp_path: Any, **knobs: Any) -> ServiceClient:
    warnings.simplefilter("ignore", FutureWarning)
    return ServiceClient(config=SimConfig(root_dir=tmp_path, **knobs))


def _prompt(tc: Any) -> list[int]:
    return list(tc.get_tokenizer().encode(HELLO))


def _datum(
    prompt: list[int], seq: types.SampledSequence, advantage: float, provenance: bool = True
) -> types.Datum:
    """prompt + sampled tokens as one datum; its provenance names the sequence for every position."""
    tokens = prompt + list(seq.tokens)
    n = len(prompt) - 1
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": np.asarray(tokens[1:], dtype=np.int64),
            "logprobs": np.asarray([0.0] * n + list(seq.logprobs or []), dtype=np.float32),
            "advantages": np.asarray([0.0] * n + [advantage] * len(seq.tokens), dtype=np.float32),
        },
    )
    if not provenance:
        return datum
    sid = seq.sequence_id
    return datum.with_provenance(
        model_input=[
            types.PromptProvenanceSpan(sequence_id=sid, length=len(prompt)),
            types.SampledProvenanceSpan(sequence_id=sid, length=len(seq.tokens) - 1),
        ],
        loss_fn_inputs=[
            types.PromptProvenanceSpan(sequence_id=sid, offset=1, length=n),
            types.SampledProvenanceSpan(sequence_id=sid, length=len(seq.tokens)),
        ],
    )


def _sample(sampler: Any, prompt: list[int], n: int = 2) -> types.SampleResponse:
    return sampler.sample(types.ModelInput.from_ints(prompt), n, PARAMS).result()  # type: ignore[no-any-return]


# ---- stable_reinforce and recorded sequences -------------------------------------------------------
def test_stable_reinforce_trains_on_recorded_sequences(tmp_path: Any) -> None:
    service = _service(tmp_path)
    tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
    prompt = _prompt(tc)
    sampler = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    response = _sample(sampler, prompt)
    data = [_datum(prompt, seq, 1.0) for seq in response.sequences]
    out = tc.forward_backward(data, "stable_reinforce", {"kl_coeff": 0.1}).result()
    # on policy: weight 1, penalty 0, so the loss is -sum(p * A) over the sampled tokens
    expected = -sum(float(np.sum(o["logprobs"].to_numpy()[len(prompt) - 1 :])) for o in out.loss_fn_outputs)
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-6)
    tc.optim_step(ADAM).result()
    # after the step the recorded (sampler) logprobs, not the client's, are q: the loss changes
    again = tc.forward(data, "stable_reinforce").result()
    assert again.metrics["loss:sum"] != pytest.approx(out.metrics["loss:sum"], rel=1e-6)


@pytest.mark.parametrize(
    "case", ["not_recorded", "no_provenance", "unknown_id", "wrong_tokens", "other_service"]
)
def test_stable_reinforce_refuses_what_it_cannot_train(tmp_path: Any, case: str) -> None:
    service = _service(tmp_path)
    tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
    prompt = _prompt(tc)
    sampler = tc.save_weights_and_get_sampling_client(record_stability_info=case != "not_recorded").result()
    seq = _sample(sampler, prompt, 1).sequences[0]
    assert seq.sequence_id  # every sequence has an id; only recorded ones can be trained on
    datum = _datum(prompt, seq, 1.0, provenance=case != "no_provenance")
    if case == "unknown_id":
        datum = _datum(prompt, types.SampledSequence(**{**_fields(seq), "sequence_id": "nope"}), 1.0)
    if case == "wrong_tokens":
        datum = _datum([*prompt[:-1], prompt[-1] + 1], seq, 1.0)
    if case == "other_service":
        other = _service(tmp_path).create_lora_training_client(BASE, rank=4, seed=0).result()
        tc = other
    with pytest.raises(tinker.BadRequestError):
        tc.forward_backward([datum], "stable_reinforce").result()


def _fields(seq: types.SampledSequence) -> dict[str, Any]:
    return {
        "stop_reason": seq.stop_reason,
        "sequence_id": seq.sequence_id,
        "tokens_np": seq.tokens_np,
        "logprobs_np": seq.logprobs_np,
    }


def test_a_recorded_sequence_expires_a_ttl_after_its_last_use(tmp_path: Any) -> None:
    service = _service(tmp_path, stability_ttl_s=0.6)
    tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
    prompt = _prompt(tc)
    sampler = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    data = [_datum(prompt, seq, 1.0) for seq in _sample(sampler, prompt).sequences]
    for _ in range(3):  # each use restarts the clock: 3 x 0.3 s > ttl, still alive
        time.sleep(0.3)
        tc.forward(data, "stable_reinforce").result()
    time.sleep(0.8)
    with pytest.raises(tinker.BadRequestError, match="unknown or expired"):
        tc.forward(data, "stable_reinforce").result()


# ---- in-flight clients ---------------------------------------------------------------------------------
def _versions(service: ServiceClient, response: types.SampleResponse) -> set[int]:
    ledger = service._runtime.stability
    return {ledger.peek(seq.sequence_id).weights_version for seq in response.sequences}  # type: ignore[union-attr]


def test_an_inflight_save_reaches_existing_clients(tmp_path: Any) -> None:
    service = _service(tmp_path)
    tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
    prompt = _prompt(tc)
    first = tc.save_weights_and_get_sampling_client(kind="inflight", record_stability_info=True).result()
    snapshot = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    assert _versions(service, _sample(first, prompt)) == {1}
    tc.forward_backward(
        [_datum(prompt, s, 1.0, False) for s in _sample(first, prompt).sequences], "importance_sampling"
    ).result()
    tc.optim_step(ADAM).result()
    second = tc.save_weights_and_get_sampling_client(kind="inflight", record_stability_info=True).result()
    assert first.get_sampler_handle() != second.get_sampler_handle()  # a fresh session per client
    assert _versions(service, _sample(first, prompt)) == {3}  # the existing client adopted the save
    assert _versions(service, _sample(second, prompt)) == {3}
    assert _versions(service, _sample(snapshot, prompt)) == {2}  # snapshots stay
    # the weights really are the new ones: sampled logprobs equal the trained model's
    seq = _sample(first, prompt, 1).sequences[0]
    out = tc.forward([_datum(prompt, seq, 0.0, False)], "importance_sampling").result()
    trained = out.loss_fn_outputs[0]["logprobs"].to_numpy()[len(prompt) - 1 :]
    np.testing.assert_allclose(trained, np.asarray(seq.logprobs), atol=2e-6)


def test_with_a_propagation_delay_samples_never_run_on_weights_older_than_their_client(tmp_path: Any) -> None:
    service = _service(tmp_path, inflight_delay_s=0.5)
    tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
    prompt = _prompt(tc)
    first = tc.save_weights_and_get_sampling_client(kind="inflight", record_stability_info=True).result()
    second = tc.save_weights_and_get_sampling_client(kind="inflight", record_stability_info=True).result()
    assert _versions(service, _sample(first, prompt)) == {1}  # the save has not propagated yet
    assert _versions(service, _sample(second, prompt)) == {2}  # but a client never runs older than its save
    time.sleep(0.6)
    assert _versions(service, _sample(first, prompt)) == {2}


@given(
    saves=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=8),
    delay=st.floats(min_value=0.0, max_value=3.0),
    probes=st.lists(st.tuples(st.integers(0, 7), st.floats(min_value=0.0, max_value=10.0)), max_size=10),
)
def test_inflight_target_serves_the_newest_visible_version_never_older_than_the_client(
    saves: list[float], delay: float, probes: list[tuple[int, float]]
) -> None:
    """...and a sample on a version not visible yet (its client's own) waits exactly until it is."""
    now = [0.0]
    target = InflightTarget(delay, clock=lambda: now[0])
    published: list[tuple[int, float]] = []
    for version, gap in enumerate(saves, start=1):
        now[0] += gap
        target.publish(version, policy=object())  # type: ignore[arg-type]
        published.append((version, now[0]))
    for client, wait in sorted(probes, key=lambda p: p[1]):
        min_version = published[client % len(published)][0]
        now[0] = max(now[0], published[-1][1] + wait * 0.1)
        serving = InflightClientWeights(target, min_version).serve()
        visible = [v for v, at in published if at + delay <= now[0]]
        assert serving.version == max([min_version, *visible])
        visible_at = dict(published)[serving.version] + delay
        assert serving.ready_in_s == pytest.approx(max(0.0, visible_at - now[0]))


# ---- context --------------------------------------------------------------------------------------------
@given(
    context=st.integers(2, 64),
    prompt=st.integers(1, 64),
    max_tokens=st.one_of(st.none(), st.integers(1, 64)),
    completion=st.integers(1, 64),
)
def test_a_datum_of_any_sequence_sample_can_return_fits_forward_backward(
    context: int, prompt: int, max_tokens: int | None, completion: int
) -> None:
    try:
        check_sample_budget(prompt, max_tokens, context)
    except tinker.BadRequestError:
        assert prompt + (max_tokens or 1) > context
        return
    completion = min(completion, max_tokens or context, context - prompt)  # sample stops there
    check_context(prompt + completion - 1, context, "model_input", "forward_backward")


def test_forward_backward_refuses_a_datum_longer_than_the_context(tmp_path: Any) -> None:
    service = _service(tmp_path)
    tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
    context = resolve(BASE).max_context_length
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1] * context),
        loss_fn_inputs={
            "target_tokens": np.ones(context, dtype=np.int64),
            "weights": np.ones(context, dtype=np.float32),
        },
    )
    with pytest.raises(tinker.BadRequestError, match="context"):
        tc.forward_backward([datum], "cross_entropy").result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    with pytest.raises(tinker.BadRequestError, match="context") as refused:
        sampler.sample(types.ModelInput.from_ints([1] * (context - 10)), 1, PARAMS).result()  # + 24 > context
    # the service's own message, which the cookbook (and so the endpoint) recognises as an overflow
    assert _is_context_overflow(str(refused.value))
