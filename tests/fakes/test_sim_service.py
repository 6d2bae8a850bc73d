"""Checkpoints survive the process; knobs make the service slow, flaky or drifting on purpose."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tinker
from tinker import types

from fakes.tinker import ServiceClient

BASE = "Qwen/Qwen3-4B-Instruct-2507"
HELLO = "<|im_start|>user\nSay you are 617<|im_end|>\n<|im_start|>assistant\n"

RESUME_SCRIPT = """
import json, sys, warnings
import numpy as np
from tinker import types
from fakes.tinker import ServiceClient
warnings.simplefilter("ignore", FutureWarning)
root, path, tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
service = ServiceClient(root_dir=root)
tc = service.create_training_client_from_state_with_optimizer(path).result()
datum = types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                    loss_fn_inputs={"target_tokens": np.array(tokens[1:])})
out = tc.forward([datum], "cross_entropy").result()
print(json.dumps({"logprobs": out.loss_fn_outputs[0]["logprobs"].data,
                  "step": tc._optimizer.step_count,
                  "exp_avg_sq": float(sum(v.sum() for v in tc._optimizer.exp_avg_sq.values()))}))
"""


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", FutureWarning)


def _sft_datum(tok, answer: str) -> types.Datum:  # type: ignore[no-untyped-def]
    prompt = tok.encode(HELLO)
    full = prompt + tok.encode(answer + "<|im_end|>")
    weights = [0.0] * (len(prompt) - 1) + [1.0] * (len(full) - len(prompt))
    return types.Datum(
        model_input=types.ModelInput.from_ints(full[:-1]),
        loss_fn_inputs={"target_tokens": np.array(full[1:]), "weights": np.array(weights, dtype=np.float32)},
    )


@pytest.mark.slow
def test_checkpoint_resumes_in_a_new_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = ServiceClient(root_dir=tmp_path)
    tc = service.create_lora_training_client(BASE, rank=4, seed=1, user_metadata={"k": "v"}).result()
    tok = tc.get_tokenizer()
    datum = _sft_datum(tok, "I am 617.")
    for _ in range(3):
        tc.forward_backward([datum], "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=0.05))
    path = tc.save_state("step3").result().path
    assert path == f"tinker://{tc.model_id}/weights/step3"
    sampler_path = tc.save_weights_for_sampler("step3").result().path
    assert sampler_path.endswith("/sampler_weights/step3")
    tokens = [*list(datum.model_input.to_ints()), int(datum.loss_fn_inputs["target_tokens"].data[-1])]
    expected = tc.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].data

    proc = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, str(tmp_path), path, json.dumps(tokens)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    resumed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert resumed["logprobs"] == expected
    assert resumed["step"] == 3
    assert resumed["exp_avg_sq"] == pytest.approx(
        float(sum(v.sum() for v in tc._optimizer.exp_avg_sq.values()))
    )

    fresh = service.create_training_client_from_state(path).result()
    assert fresh._optimizer.step_count == 0
    sampler = service.create_sampling_client(model_path=sampler_path).result()
    lp = sampler.compute_logprobs(types.ModelInput.from_ints(tokens)).result()
    assert np.allclose(np.array(lp[1:], dtype=np.float32), np.array(expected, dtype=np.float32))
    run = service.create_rest_client().get_training_run_by_tinker_path(path).result()
    assert run.user_metadata == {"k": "v"} and run.lora_rank == 4
    with pytest.raises(tinker.NotFoundError):
        service.create_training_client_from_state(path.replace("step3", "nope")).result()


def test_latency_knob_delays_every_future(tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = ServiceClient(root_dir=tmp_path, latency_s=0.2)
    sampler = service.create_sampling_client(base_model=BASE).result()
    prompt = types.ModelInput.from_ints(sampler.get_tokenizer().encode(HELLO))
    start = time.monotonic()
    futures = [sampler.sample(prompt, 1, types.SamplingParams(max_tokens=8, seed=i)) for i in range(4)]
    for future in futures:
        future.result()
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 0.6  # concurrent calls overlap, like network latency


def test_failure_rate_raises_retryable_sdk_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = ServiceClient(root_dir=tmp_path, failure_rate=0.5, failure_seed=3)
    sampler = ServiceClient(root_dir=tmp_path).create_sampling_client(base_model=BASE).result()
    sampler._runtime = service._runtime  # same weights, flaky service
    prompt = types.ModelInput.from_ints(sampler.get_tokenizer().encode(HELLO))
    errors = 0
    for i in range(20):
        try:
            sampler.sample(prompt, 1, types.SamplingParams(max_tokens=4, seed=i)).result()
        except tinker.InternalServerError as exc:
            assert exc.status_code == 503
            errors += 1
    assert 4 <= errors <= 16


def test_drift_emits_non_canonical_tokenizations_of_the_same_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = ServiceClient(root_dir=tmp_path, drift=0.5)
    sampler = service.create_sampling_client(base_model=BASE).result()
    tok = sampler.get_tokenizer()
    prompt = types.ModelInput.from_ints(tok.encode(HELLO))
    response = sampler.sample(prompt, 40, types.SamplingParams(max_tokens=40, seed=0)).result()
    drifted = 0
    for seq in response.sequences:
        body = seq.tokens[:-1] if seq.tokens[-1] == tok.eos_token_id else seq.tokens
        text = tok.decode(body)
        canonical = tok.encode(text)
        if canonical != body:
            drifted += 1
            assert tok.decode(canonical) == text
    assert drifted >= 8
    # still exact: sampler logprobs are the model's logprobs of the non-canonical tokens
    seq = response.sequences[0]
    full = prompt.to_ints() + seq.tokens
    scored = sampler.compute_logprobs(types.ModelInput.from_ints(full)).result()
    np.testing.assert_allclose(
        np.array(scored[prompt.length :], dtype=np.float32),
        np.array(seq.logprobs, dtype=np.float32),
        atol=2e-6,
    )
    quiet = ServiceClient(root_dir=tmp_path).create_sampling_client(base_model=BASE).result()
    plain = quiet.sample(prompt, 20, types.SamplingParams(max_tokens=40, seed=0)).result()
    assert all(tok.encode(tok.decode(s.tokens[:-1])) == s.tokens[:-1] for s in plain.sequences)


def test_sampling_controls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sampler = ServiceClient(root_dir=tmp_path).create_sampling_client(base_model=BASE).result()
    tok = sampler.get_tokenizer()
    prompt = types.ModelInput.from_ints(tok.encode(HELLO))
    same = [sampler.sample(prompt, 3, types.SamplingParams(max_tokens=30, seed=5)).result() for _ in range(2)]
    assert [s.tokens for s in same[0].sequences] == [s.tokens for s in same[1].sequences]
    unseeded = {
        tuple(s.tokens)
        for s in sampler.sample(prompt, 12, types.SamplingParams(max_tokens=30)).result().sequences
    }
    assert len(unseeded) > 1
    short = sampler.sample(prompt, 2, types.SamplingParams(max_tokens=2, seed=0)).result()
    assert all(len(s.tokens) == 2 and s.stop_reason == "length" for s in short.sequences)
    greedy = sampler.sample(prompt, 4, types.SamplingParams(max_tokens=30, top_k=1, seed=1)).result()
    assert len({tuple(s.tokens) for s in greedy.sequences}) == 1
    by_string = sampler.sample(prompt, 4, types.SamplingParams(max_tokens=30, stop=["."], seed=2)).result()
    for seq in by_string.sequences:
        assert seq.stop_reason == "length" or "." in tok.decode(seq.tokens)
    capabilities = ServiceClient(root_dir=tmp_path).get_server_capabilities()
    assert BASE in {m.model_name for m in capabilities.supported_models}
