"""The real tinker SDK end to end: training client, sampling, losses, checkpoints, REST.

Runs against the wire simulator by default and against real Tinker with ``--live``; the
assertions hold on both, except those guarded by ``target.is_sim`` (exact simulator facts).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import tinker
from tinker import types

from .conftest import Target
from .helpers import chat_prompt, rl_datum

pytestmark = pytest.mark.live

PARAMS = types.SamplingParams(max_tokens=24, temperature=1.0, seed=7)


@pytest.fixture(scope="module")
def training(service: tinker.ServiceClient, target: Target) -> Any:
    return service.create_lora_training_client(target.model, rank=target.rank, seed=0).result()


def _sample(sampler: Any, prompt: types.ModelInput, n: int = 2) -> types.SampleResponse:
    return sampler.sample(prompt, n, PARAMS).result()


def test_lora_client_samples_with_logprobs(training: Any, target: Target) -> None:
    info = training.get_info()
    assert info.model_id == training.model_id
    assert info.model_data.model_name == target.model
    sampler = training.save_weights_and_get_sampling_client().result()
    assert sampler.get_base_model() == target.model
    prompt = chat_prompt(target.model, "Hello! Who are you?")
    response = _sample(sampler, prompt)
    assert len(response.sequences) == 2
    for seq in response.sequences:
        assert seq.tokens and seq.logprobs is not None and len(seq.logprobs) == len(seq.tokens)
        assert all(math.isfinite(lp) and lp <= 0.0 for lp in seq.logprobs)
        assert seq.stop_reason in ("stop", "length")
        assert isinstance(seq.sequence_id, str) and seq.sequence_id
    assert len({s.sequence_id for s in response.sequences}) == 2


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo"])
def test_forward_backward_rl_losses_and_optim_step(training: Any, target: Target, loss_fn: str) -> None:
    sampler = training.save_weights_and_get_sampling_client().result()
    prompt = chat_prompt(target.model, "Say hello to the team.")
    seqs = _sample(sampler, prompt).sequences
    data = [rl_datum(prompt, seq, adv) for seq, adv in zip(seqs, [1.0, -1.0], strict=True)]
    out = training.forward_backward(data, loss_fn).result()
    assert len(out.loss_fn_outputs) == 2
    for datum, result in zip(data, out.loss_fn_outputs, strict=True):
        n = len(datum.loss_fn_inputs["target_tokens"].tolist())
        assert result["logprobs"].shape == [n]
        assert len(result["logprobs"].tolist()) == n
    assert math.isfinite(out.metrics["loss:sum"])
    if target.is_sim:  # sampler and trainer share one model: ratios are 1, loss = -sum(adv)
        expected = -sum(len(s.tokens) * a for s, a in zip(seqs, [1.0, -1.0], strict=True))
        assert out.metrics["loss:sum"] == pytest.approx(expected, abs=1e-3)
        sampled = out.loss_fn_outputs[0]["logprobs"].tolist()[-len(seqs[0].tokens) :]
        assert sampled == pytest.approx(list(seqs[0].logprobs), abs=1e-5)
    step = training.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    assert isinstance(step, types.OptimStepResponse)


def test_requests_of_one_client_apply_in_order(training: Any, target: Target) -> None:
    """forward, forward_backward, optim_step, forward submitted back to back: the second forward
    sees the update, the first does not (the futures are awaited only at the end)."""
    sampler = training.save_weights_and_get_sampling_client().result()
    prompt = chat_prompt(target.model, "Who are you?")
    seq = _sample(sampler, prompt, 1).sequences[0]
    data = [rl_datum(prompt, seq, 1.0)]
    before = training.forward(data, "importance_sampling")
    training.forward_backward(data, "importance_sampling")
    training.optim_step(types.AdamParams(learning_rate=5e-2))
    after = training.forward(data, "importance_sampling")
    lp_before = before.result().loss_fn_outputs[0]["logprobs"].tolist()
    lp_after = after.result().loss_fn_outputs[0]["logprobs"].tolist()
    n = len(data[0].loss_fn_inputs["target_tokens"].tolist())
    assert len(lp_before) == len(lp_after) == n
    assert lp_after != lp_before
    if target.is_sim:  # a positive advantage makes the sampled answer more likely
        answer = len(seq.tokens)
        assert sum(lp_after[-answer:]) > sum(lp_before[-answer:])


_RESUME = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tinker
    from tinker import types

    path, tokens = sys.argv[1], json.loads(sys.argv[2])
    service = tinker.ServiceClient()
    training = service.create_training_client_from_state_with_optimizer(path).result()
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64))},
    )
    out = training.forward([datum], "cross_entropy").result()
    print(json.dumps({"model_id": training.model_id, "logprobs": out.loss_fn_outputs[0]["logprobs"].tolist()}))
    service.close("success").result()
    """
)


@pytest.mark.slow
def test_save_state_and_resume_in_a_new_process(training: Any, target: Target) -> None:
    saved = training.save_state("live-resume").result()
    assert saved.path.startswith("tinker://") and "/weights/live-resume" in saved.path
    tokens = [*chat_prompt(target.model, "Hello there.").to_ints(), 9707, 0]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=tokens[1:], dtype="int64")},
    )
    here = training.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].tolist()
    env = {**os.environ, **target.env()}
    run = subprocess.run(
        [sys.executable, "-c", _RESUME, saved.path, json.dumps(tokens)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    there = json.loads(run.stdout.strip().splitlines()[-1])
    assert there["model_id"] != training.model_id
    # the simulator is deterministic; a GPU service may differ in the last digits between replicas
    assert there["logprobs"] == pytest.approx(here, abs=1e-4 if target.is_sim else 5e-2)


def test_sampler_weights_rest_client_and_delete(
    service: tinker.ServiceClient, training: Any, target: Target
) -> None:
    saved = training.save_weights_for_sampler("live-sampler").result()
    assert "/sampler_weights/live-sampler" in saved.path
    sampler = service.create_sampling_client(model_path=saved.path).result()
    assert sampler.get_base_model() == target.model
    assert _sample(sampler, chat_prompt(target.model, "Hi!"), 1).sequences[0].tokens
    rest = tinker.RestClient(base_url=target.base_url, api_key=target.api_key)
    run = rest.get_training_run_by_tinker_path(saved.path).result()
    assert run.training_run_id == training.model_id
    assert run.base_model == target.model and run.is_lora and run.lora_rank == target.rank
    listed = rest.list_checkpoints(training.model_id).result().checkpoints
    assert saved.path in {c.tinker_path for c in listed}
    rest.delete_checkpoint_from_tinker_path(saved.path).result()
    listed = rest.list_checkpoints(training.model_id).result().checkpoints
    assert saved.path not in {c.tinker_path for c in listed}


def test_capabilities_list_the_model(target: Target) -> None:
    rest = tinker.RestClient(base_url=target.base_url, api_key=target.api_key)
    models = {m.model_name for m in rest.get_server_capabilities().result().supported_models}
    assert target.model in models


def test_an_invalid_request_fails_its_future_with_the_reason(
    service: tinker.ServiceClient, target: Target
) -> None:
    training = service.create_lora_training_client(target.model, rank=target.rank, seed=1).result()
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={
            "target_tokens": types.TensorData(data=[2, 3, 4], dtype="int64"),
            "mask": types.TensorData(data=[1.0, 1.0, 1.0], dtype="float32"),
        },
    )
    with pytest.raises(tinker.TinkerError) as failure:
        training.forward_backward([datum], "cross_entropy").result()
    if target.is_sim:
        assert isinstance(failure.value, tinker.RequestFailedError)
        assert "mask" in str(failure.value)


def test_forward_backward_custom_runs_its_loss_client_side(training: Any, target: Target) -> None:
    tokens = [*chat_prompt(target.model, "Hi.").to_ints(), 9707, 0]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=tokens[1:], dtype="int64")},
    )

    def negative_log_likelihood(data: list[types.Datum], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
        loss = -sum(lp.sum() for lp in logprobs)
        return loss, {"nll": float(loss.detach())}

    custom = training.forward_backward_custom([datum], negative_log_likelihood).result()
    plain = training.forward([datum], "cross_entropy").result()
    assert custom.metrics["nll"] == pytest.approx(
        -sum(plain.loss_fn_outputs[0]["logprobs"].tolist()), rel=1e-4
    )
