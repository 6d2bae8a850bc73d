"""Where a save-for-sampler's time goes (``SimConfig.sampler_load_s``), per the SDK's in-flight contract.

A snapshot save (and a ``save_weights_for_sampler`` path) holds the training queue while serving
replicas load its weights, so its client serves them at once; an in-flight save "does not wait for
serving replicas to finish loading weights": it holds the queue only while writing them, and its
version reaches samplers ``sampler_load_s`` (+ ``inflight_delay_s``) after it completes, never
before. Meanwhile existing clients sample the previous version and a client created at the save
waits for it. Durations are checked as lower bounds (a busy machine only adds time), except where a
knob is made so large (30 s) that not paying it is unmistakable.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tinker
from tinker import types

from fakes.tinker import ServiceClient, SimConfig
from fakes.tinker.inflight import InflightClientWeights, InflightTarget
from fakes.wire import start_in_thread

BASE = "Qwen/Qwen3-4B-Instruct-2507"
HELLO = "<|im_start|>user\nSay you are 617<|im_end|>\n<|im_start|>assistant\n"
PARAMS = types.SamplingParams(max_tokens=16, seed=3)
ADAM = types.AdamParams(learning_rate=0.05)
EPS = 1e-3


def _training(tmp_path: Path, **knobs: Any) -> tuple[ServiceClient, Any, list[int]]:
    warnings.simplefilter("ignore", FutureWarning)
    service = ServiceClient(config=SimConfig(root_dir=tmp_path, **knobs))
    tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
    return service, tc, list(tc.get_tokenizer().encode(HELLO))


def _ran_on(service: ServiceClient, client: Any, prompt: list[int]) -> set[int]:
    """The weights versions one sampling call ran on (from the simulator's ledger)."""
    response = client.sample(types.ModelInput.from_ints(prompt), 2, PARAMS).result()
    ledger = service._runtime.stability
    return {ledger.peek(seq.sequence_id).weights_version for seq in response.sequences}  # type: ignore[union-attr]


def _train_a_step(tc: Any, tokens: list[int]) -> None:
    """One cross-entropy step on ``tokens``: their logprobs change."""
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": np.asarray(tokens[1:], dtype=np.int64),
            "weights": np.ones(len(tokens) - 1, dtype=np.float32),
        },
    )
    tc.forward_backward([datum], "cross_entropy").result()
    tc.optim_step(ADAM).result()


def _inflight(tc: Any) -> Any:
    return tc.save_weights_and_get_sampling_client(kind="inflight", record_stability_info=True).result()


# ---- the knob ----------------------------------------------------------------------------------------
def test_the_load_defaults_to_zero_and_splits_by_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SimConfig().sampler_load_s == 0.0
    assert SimConfig().save_hold_s("snapshot") == 0.0 and SimConfig().inflight_visible_after_s == 0.0
    config = SimConfig(save_sampler_s=0.1, sampler_load_s=0.3, inflight_delay_s=0.2)
    assert config.save_hold_s("snapshot") == pytest.approx(0.4)  # a snapshot waits for the load
    assert config.save_hold_s("inflight") == pytest.approx(0.1)  # an in-flight save does not
    assert config.inflight_visible_after_s == pytest.approx(0.5)  # an in-flight save's weights lag it
    monkeypatch.setenv("AGL_TINKER_SIM_SAMPLER_LOAD_S", "0.7")
    assert SimConfig.from_env().sampler_load_s == 0.7
    with pytest.raises(ValueError, match="sampler_load_s"):
        SimConfig(sampler_load_s=-0.1)


# ---- the in-flight target, on an injected clock -----------------------------------------------------
def test_a_client_at_a_version_still_loading_waits_for_it_while_older_clients_keep_the_previous() -> None:
    now = [0.0]
    target = InflightTarget(0.3, clock=lambda: now[0])
    target.publish(1, policy=object())  # type: ignore[arg-type]
    first = InflightClientWeights(target, 1)
    assert (first.serve().version, first.serve().ready_in_s) == (1, pytest.approx(0.3))
    now[0] = 1.0
    assert (first.serve().version, first.serve().ready_in_s) == (1, 0.0)
    target.publish(2, policy=object())  # type: ignore[arg-type]
    second = InflightClientWeights(target, 2)
    now[0] = 1.1
    assert (first.serve().version, first.serve().ready_in_s) == (1, 0.0)  # the previous version, no wait
    assert (second.serve().version, second.serve().ready_in_s) == (2, pytest.approx(0.2))
    now[0] = 1.3
    assert first.serve().version == 2 and first.serve().ready_in_s == 0.0
    assert second.serve().ready_in_s == 0.0


# ---- the simulator's training queue and samplers -----------------------------------------------------
@pytest.mark.parametrize("save", ["snapshot", "path"])
def test_a_snapshot_save_holds_the_training_queue_while_its_weights_load(tmp_path: Path, save: str) -> None:
    _, tc, _ = _training(tmp_path, save_sampler_s=0.1, sampler_load_s=0.3)
    start = time.monotonic()
    saved = (
        tc.save_weights_and_get_sampling_client()
        if save == "snapshot"
        else tc.save_weights_for_sampler("loaded")
    )
    tc.optim_step(ADAM).result()  # queued behind the save
    assert time.monotonic() - start >= 0.4 - EPS
    if save == "snapshot":
        assert saved.result().weights.serve().ready_in_s == 0.0  # loaded: served at once


def test_an_inflight_save_holds_the_queue_only_while_it_writes(tmp_path: Path) -> None:
    _, tc, _ = _training(tmp_path, save_sampler_s=0.1, sampler_load_s=30.0)
    start = time.monotonic()
    saved = tc.save_weights_and_get_sampling_client(kind="inflight")
    tc.optim_step(ADAM).result()
    elapsed = time.monotonic() - start
    assert 0.1 - EPS <= elapsed < 10.0  # the 30 s load is not on the training queue
    assert saved.result().weights.serve().ready_in_s > 20.0  # the replicas are still loading


def test_an_inflight_version_is_never_visible_before_its_save_completes(tmp_path: Path) -> None:
    service, tc, prompt = _training(tmp_path, save_sampler_s=1.0)
    first = _inflight(tc)
    saving = tc.save_weights_and_get_sampling_client(kind="inflight", record_stability_info=True)
    time.sleep(0.2)
    assert not saving.future().done()  # still writing the weights
    assert _ran_on(service, first, prompt) == {1}
    assert first.weights.serve().version == 1
    saving.result()
    assert first.weights.serve().version == 2  # no load, no delay: visible as the save completes


def test_during_the_load_old_clients_sample_the_previous_version_and_new_ones_wait(tmp_path: Path) -> None:
    service, tc, prompt = _training(tmp_path, sampler_load_s=0.6)
    first = _inflight(tc)
    assert _ran_on(service, first, prompt) == {1}  # waited for its own save's load
    answer = first.sample(types.ModelInput.from_ints(prompt), 1, PARAMS).result().sequences[0]
    text = [*prompt, *answer.tokens]
    _train_a_step(tc, text)
    second = _inflight(tc)
    assert _ran_on(service, first, prompt) == {1}  # the new version is still loading
    ready = second.weights.serve().ready_in_s
    start = time.monotonic()
    assert _ran_on(service, second, prompt) == {2}  # the client's guarantee: its save or newer
    assert ready > 0.2 and time.monotonic() - start >= ready - 0.05
    assert _ran_on(service, first, prompt) == {2}  # loaded: the existing client adopted it

    # compute_logprobs waits the same way, on the client's version
    _train_a_step(tc, text)
    third = _inflight(tc)
    model_input = types.ModelInput.from_ints(text)
    old = first.compute_logprobs(model_input).result()  # version 2 while version 3 loads
    ready = third.weights.serve().ready_in_s
    start = time.monotonic()
    waited = third.compute_logprobs(model_input).result()
    assert ready > 0.2 and time.monotonic() - start >= ready - 0.05
    trained = tc.save_weights_and_get_sampling_client().result().compute_logprobs(model_input).result()
    assert waited[1:] == pytest.approx(trained[1:], abs=1e-6)
    assert waited[1:] != pytest.approx(old[1:], abs=1e-6)


# ---- over the wire ------------------------------------------------------------------------------------
def test_over_the_wire_an_inflight_save_returns_before_its_weights_load(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    with start_in_thread(SimConfig(root_dir=tmp_path, save_sampler_s=0.1, sampler_load_s=30.0)) as server:
        service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
        tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
        start = time.monotonic()
        client = tc.save_weights_and_get_sampling_client(kind="inflight").result()
        assert 0.1 - EPS <= time.monotonic() - start < 10.0  # the 30 s load is not part of the save
        registered = server.server.service.samplers
        assert len(registered) == 1
        (sampler,) = registered.values()
        assert sampler.client.weights.serve().ready_in_s > 20.0  # its samples would wait for the load
        assert client.get_base_model() == BASE
        service.close("success").result()
