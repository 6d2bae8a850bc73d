"""Wire faults are absorbed by the SDK's own retry handling: every kind, at a seeded rate, is
injected (the server counts it) and the SDK still returns exactly what a fault-free in-process
simulator returns for the same seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tinker
from tinker import types

import fakes.tinker as sim
from fakes.wire import RunningWireServer, WireFaults, start_in_thread

from .conftest import SIM_KEY, SIM_MODEL
from .helpers import chat_prompt, rl_datum

pytestmark = [pytest.mark.live, pytest.mark.sim_only, pytest.mark.slow]

PARAMS = types.SamplingParams(max_tokens=16, seed=5)
CASES = {
    "drop": WireFaults(drop_rate=0.15, seed=1),
    "5xx": WireFaults(error_5xx_rate=0.25, seed=1),
    "408": WireFaults(timeout_408_rate=0.3, seed=1),
    "429": WireFaults(rate_limit_429_rate=0.25, seed=1),
    "try_again": WireFaults(try_again_rate=0.5, seed=1),
    "slow": WireFaults(slow_future_rate=0.5, slow_future_s=0.3, seed=1),
}


@pytest.fixture(params=list(CASES))
def faulty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, RunningWireServer]]:
    # A short long-poll hold, so slow futures also meet the try_again-after-hold path.
    with start_in_thread(sim.SimConfig(root_dir=tmp_path), CASES[request.param], poll_hold_s=0.1) as server:
        yield request.param, server


def _session(client: Any, prompt: types.ModelInput) -> tuple[list[list[int]], list[float], dict[str, float]]:
    """Sample, train one step, sample again: the results to compare across targets."""
    training = client.create_lora_training_client(SIM_MODEL, rank=8, seed=2).result()
    sampler = training.save_weights_and_get_sampling_client().result()
    first = [sampler.sample(prompt, 1, PARAMS) for _ in range(3)]
    seqs = [f.result().sequences[0] for f in first]
    out = training.forward_backward([rl_datum(prompt, s, 1.0) for s in seqs], "importance_sampling").result()
    step = training.optim_step(types.AdamParams(learning_rate=3e-2)).result()
    after = training.save_weights_and_get_sampling_client().result().sample(prompt, 2, PARAMS).result()
    tokens = [s.tokens for s in seqs] + [s.tokens for s in after.sequences]
    return tokens, out.loss_fn_outputs[0]["logprobs"].tolist(), {**out.metrics, **step.metrics}


def test_sdk_retries_absorb_each_wire_fault(faulty: tuple[str, RunningWireServer], tmp_path: Path) -> None:
    kind, server = faulty
    prompt = chat_prompt(SIM_MODEL, "Hello, who are you?")
    expected = _session(sim.ServiceClient(root_dir=tmp_path / "inproc"), prompt)
    client = tinker.ServiceClient(base_url=server.url, api_key=SIM_KEY)
    try:
        got = _session(client, prompt)
    finally:
        client.close("success").result()
    assert server.server.faults.counts[kind] > 0, server.server.faults.counts
    assert got[0] == expected[0]
    assert got[1] == pytest.approx(expected[1], abs=1e-6)
    assert got[2] == pytest.approx(expected[2], rel=1e-9)


def test_faults_follow_the_seed() -> None:
    from fakes.wire.faults import FaultInjector

    injectors = [FaultInjector(WireFaults(error_5xx_rate=0.3, seed=s)) for s in (4, 4, 5)]
    draws = [[injector.draw(False) for _ in range(50)] for injector in injectors]
    assert draws[0] == draws[1] != draws[2]
    assert any(d is not None for d in draws[0]) and any(d is None for d in draws[0])


def test_fault_knobs_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_TINKER_WIRE_DROP_RATE", "0.1")
    monkeypatch.setenv("AGL_TINKER_WIRE_SEED", "9")
    faults = WireFaults.from_env(try_again_rate=0.2)
    assert (faults.drop_rate, faults.seed, faults.try_again_rate) == (0.1, 9, 0.2)
    with pytest.raises(ValueError):
        WireFaults(drop_rate=0.7, error_5xx_rate=0.6)
