"""The simulator's Tinker-like cost model: sampling overlaps, training serialises per training client.

Durations are checked as lower bounds (the model is a floor: a busy machine only adds time) and,
where concurrency is the point, against the serial sum with a wide margin.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from tinker import types

from fakes.tinker import ServiceClient
from fakes.tinker.config import COST_KNOBS, SimConfig

BASE = "Qwen/Qwen3-4B-Instruct-2507"
HELLO = "<|im_start|>user\nSay you are 617<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", FutureWarning)


def _datum(n_tokens: int) -> types.Datum:
    tokens = list(range(100, 100 + n_tokens + 1))
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": np.array(tokens[1:]),
            "weights": np.ones(n_tokens, dtype=np.float32),
        },
    )


def test_costs_default_to_zero_and_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(getattr(SimConfig(), name) == 0.0 for name in COST_KNOBS)
    assert SimConfig().sample_cost_s(100) == 0.0 and SimConfig().train_cost_s(100) == 0.0
    monkeypatch.setenv("AGL_TINKER_SIM_TRAIN_TOKEN_S", "0.001")
    monkeypatch.setenv("AGL_TINKER_SIM_SAMPLE_TTFT_S", "0.5")
    config = SimConfig.from_env(sample_token_s=0.01)
    assert config.train_cost_s(200) == pytest.approx(0.2)
    assert config.sample_cost_s(10) == pytest.approx(0.6)
    for name in COST_KNOBS:
        with pytest.raises(ValueError, match=name):
            SimConfig(**{name: -1.0})  # type: ignore[arg-type]


def test_a_sampling_call_lasts_ttft_plus_its_tokens_and_concurrent_calls_overlap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = ServiceClient(root_dir=tmp_path, sample_ttft_s=0.3, sample_token_s=0.02)
    sampler = service.create_sampling_client(base_model=BASE).result()
    prompt = types.ModelInput.from_ints(sampler.get_tokenizer().encode(HELLO))
    params = types.SamplingParams(max_tokens=16, seed=1)

    start = time.monotonic()
    one = sampler.sample(prompt, 1, params).result()
    single_s = time.monotonic() - start
    assert single_s >= 0.3 + 0.02 * len(one.sequences[0].tokens) - 1e-3

    start = time.monotonic()
    futures = [sampler.sample(prompt, 1, types.SamplingParams(max_tokens=16, seed=i)) for i in range(8)]
    responses = [f.result() for f in futures]
    elapsed = time.monotonic() - start
    longest = max(len(r.sequences[0].tokens) for r in responses)
    assert elapsed >= 0.3 + 0.02 * longest - 1e-3
    assert elapsed < 0.5 * 8 * 0.3  # serial would be > 8 x ttft: the calls overlapped


def test_training_costs_serialise_per_training_client_not_across_clients(tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = ServiceClient(root_dir=tmp_path, train_token_s=0.01, optim_step_s=0.2, save_sampler_s=0.3)
    first = service.create_lora_training_client(BASE, rank=2, seed=0).result()
    second = service.create_lora_training_client(BASE, rank=2, seed=1).result()
    datum = _datum(20)  # 20 input tokens: 0.2 s per forward_backward

    start = time.monotonic()
    futures = [first.forward_backward([datum], "cross_entropy") for _ in range(2)]
    futures.append(first.optim_step(types.AdamParams(learning_rate=1e-3)))
    futures.append(first.save_weights_for_sampler("s"))
    done_at: dict[int, float] = {}

    def watch(i: int, future: object) -> None:
        future.result()  # type: ignore[attr-defined]
        done_at[i] = time.monotonic() - start

    threads = [threading.Thread(target=watch, args=(i, f)) for i, f in enumerate(futures)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # one queue per training client: each call starts when the previous one is done
    assert done_at[0] >= 0.2 - 1e-3
    assert done_at[1] >= 0.4 - 1e-3
    assert done_at[2] >= 0.6 - 1e-3
    assert done_at[3] >= 0.9 - 1e-3
    sampler_start = time.monotonic()
    first.save_weights_and_get_sampling_client().result()
    assert time.monotonic() - sampler_start >= 0.3 - 1e-3

    # two training clients do not wait for each other
    start = time.monotonic()
    pair = [client.forward_backward([_datum(40)], "cross_entropy") for client in (first, second)]
    for future in pair:
        future.result()
    elapsed = time.monotonic() - start
    assert 0.4 - 1e-3 <= elapsed < 0.75  # serial would be 0.8 s


def test_forward_is_charged_per_input_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = ServiceClient(root_dir=tmp_path, train_token_s=0.005)
    client = service.create_lora_training_client(BASE, rank=2, seed=0).result()
    start = time.monotonic()
    client.forward([_datum(30), _datum(30)], "cross_entropy").result()
    assert time.monotonic() - start >= 0.3 - 1e-3
