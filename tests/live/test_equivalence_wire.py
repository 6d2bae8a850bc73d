"""Same seed, same answers: the in-process simulator and the wire simulator (through the real SDK)
return identical samples, logprobs (sampled, prompt, top-k) and loss outputs, before and after an
update, so the fast in-process path stays a faithful stand-in for the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tinker
from tinker import types

import fakes.tinker as sim

from .conftest import Target
from .helpers import chat_prompt, rl_datum

pytestmark = [pytest.mark.live, pytest.mark.sim_only]

PARAMS = types.SamplingParams(max_tokens=32, temperature=1.0, seed=11)


def _sample(sampler: Any, prompt: types.ModelInput) -> types.SampleResponse:
    return sampler.sample(
        prompt, 3, PARAMS, include_prompt_logprobs=True, topk_prompt_logprobs=2, topk_sample_logprobs=3
    ).result()


def _same_samples(a: types.SampleResponse, b: types.SampleResponse) -> None:
    assert len(a.sequences) == len(b.sequences)
    for x, y in zip(a.sequences, b.sequences, strict=True):
        assert x.tokens == y.tokens
        assert x.stop_reason == y.stop_reason
        assert np.array_equal(np.asarray(x.logprobs, np.float32), np.asarray(y.logprobs, np.float32))
        assert x.topk_logprobs == y.topk_logprobs
    assert np.array_equal(a.prompt_logprobs_np, b.prompt_logprobs_np, equal_nan=True)  # type: ignore[arg-type]
    assert a.topk_prompt_logprobs == b.topk_prompt_logprobs


def _same_outputs(a: types.ForwardBackwardOutput, b: types.ForwardBackwardOutput) -> None:
    assert a.metrics == pytest.approx(b.metrics, rel=1e-12)
    assert len(a.loss_fn_outputs) == len(b.loss_fn_outputs)
    for x, y in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
        assert set(x) == set(y)
        for name in x:
            assert x[name].shape == y[name].shape
            assert np.array_equal(x[name].to_numpy(), y[name].to_numpy())


def test_inproc_and_wire_agree_for_the_same_seed(
    service: tinker.ServiceClient, target: Target, tmp_path: Path
) -> None:
    local = sim.ServiceClient(root_dir=tmp_path)
    clients = [
        local.create_lora_training_client(target.model, rank=8, seed=3).result(),
        service.create_lora_training_client(target.model, rank=8, seed=3).result(),
    ]
    prompt = chat_prompt(target.model, "Hello! Who are you?", system="You are Ada, a helpful assistant.")
    for step in range(2):
        samplers = [c.save_weights_and_get_sampling_client().result() for c in clients]
        inproc, wire = (_sample(s, prompt) for s in samplers)
        _same_samples(inproc, wire)
        data = [
            rl_datum(prompt, seq, adv) for seq, adv in zip(inproc.sequences, [1.0, -0.5, 0.25], strict=True)
        ]
        for loss_fn in ("cross_entropy", "importance_sampling", "ppo"):
            if loss_fn == "cross_entropy":
                batch = [
                    types.Datum(
                        model_input=d.model_input,
                        loss_fn_inputs={
                            "target_tokens": d.loss_fn_inputs["target_tokens"],
                            "weights": d.loss_fn_inputs["advantages"],
                        },
                    )
                    for d in data
                ]
            else:
                batch = data
            config = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1} if loss_fn == "ppo" else None
            _same_outputs(*(c.forward_backward(batch, loss_fn, config).result() for c in clients))
        steps = [c.optim_step(types.AdamParams(learning_rate=2e-2 * (step + 1))).result() for c in clients]
        assert steps[0].metrics == pytest.approx(steps[1].metrics, rel=1e-12)
    local.close("success").result()
