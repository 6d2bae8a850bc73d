"""``sampling_client_kind`` through ``Learner.publish`` on the simulator (issue 37): with
``"inflight"`` a publish reaches the client the endpoint already serves (so a call still on it runs
on the new weights or newer than the version it recorded), with ``"snapshot"`` it does not; while
the replicas load a publish (``sampler_load_s``) every call still runs on weights no older than the
version it recorded."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import tinker

from agl_tinker.loop.config import ConfigError, TrainConfig
from agl_tinker.loop.step_trainer import Learner
from agl_tinker.tinker_retry import Retrier, RetryingTrainingClient
from fakes.tinker import ServiceClient, SimConfig

BASE = "Qwen/Qwen3-4B-Instruct-2507"


class _Endpoint:
    """Records what ``Learner.publish`` swaps in (the endpoint's ``swap`` contract)."""

    def __init__(self) -> None:
        self.served: list[tuple[Any, int | str, bool]] = []

    def swap(
        self, client: Any, *, version: int | str, policy: str | None, records_stability_info: bool
    ) -> None:
        self.served.append((client, version, records_stability_info))


def _ran_on(service: ServiceClient, client: Any, prompt: list[int]) -> set[int]:
    """The simulator's weights versions the samples of one call ran on (read from its ledger)."""
    params = tinker.SamplingParams(max_tokens=8, seed=1)
    response = client.sample(tinker.ModelInput.from_ints(prompt), 2, params).result()
    ledger = service._runtime.stability
    return {ledger.peek(seq.sequence_id).weights_version for seq in response.sequences}  # type: ignore[union-attr]


def _learner(tmp_path: Path, kind: str, **knobs: float) -> tuple[ServiceClient, Any, Learner, list[int]]:
    warnings.simplefilter("ignore", FutureWarning)
    service = ServiceClient(config=SimConfig(root_dir=tmp_path, **knobs))
    tc = service.create_lora_training_client(BASE, rank=4, seed=0).result()
    prompt = list(tc.get_tokenizer().encode("Say you are 617"))
    learner = Learner(
        None,
        RetryingTrainingClient(tc, Retrier()),
        0.05,
        1,
        records_stability_info=True,
        sampling_client_kind=kind,
    )
    return service, tc, learner, prompt


async def _publish_twice(tmp_path: Path, kind: str) -> tuple[ServiceClient, _Endpoint, list[int]]:
    service, tc, learner, prompt = _learner(tmp_path, kind)
    endpoint = _Endpoint()
    await learner.publish(endpoint, 0)
    tc.optim_step(tinker.AdamParams(learning_rate=0.05)).result()
    await learner.publish(endpoint, 1)
    return service, endpoint, prompt


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["snapshot", "inflight"])
async def test_a_publish_reaches_the_served_client_only_in_flight(tmp_path: Path, kind: str) -> None:
    service, endpoint, prompt = await _publish_twice(tmp_path, kind)
    (first, v0, recorded0), (second, v1, _) = endpoint.served
    assert (v0, v1) == (0, 1) and recorded0
    new = _ran_on(service, second, prompt)
    old = _ran_on(service, first, prompt)  # a call still on the client served before the publish
    assert len(new) == 1 and len(old) == 1
    if kind == "inflight":
        assert old == new  # it adopted the published weights: never older than it recorded
    else:
        assert max(old) < min(new)  # a snapshot keeps its weights


@pytest.mark.asyncio
async def test_while_a_publish_loads_every_call_runs_on_weights_no_older_than_it_recorded(
    tmp_path: Path,
) -> None:
    service, tc, learner, prompt = _learner(tmp_path, "inflight", sampler_load_s=0.5)
    endpoint = _Endpoint()
    await learner.publish(endpoint, 0)
    (first, recorded_first, _) = endpoint.served[0]
    loaded = _ran_on(service, first, prompt)  # the simulator's version 1 is the loop's version 0
    tc.optim_step(tinker.AdamParams(learning_rate=0.05)).result()
    await learner.publish(endpoint, 1)
    (second, recorded_second, _) = endpoint.served[1]
    during = _ran_on(service, first, prompt)  # a call still on the old client, while v1 loads
    new = _ran_on(service, second, prompt)  # a call on the new client waits for v1
    after = _ran_on(service, first, prompt)
    assert (loaded, during, new, after) == ({1}, {1}, {2}, {2})
    assert (recorded_first, recorded_second) == (0, 1)  # lower bounds: each ran on its version or newer


def test_an_unknown_sampling_client_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sampling_client_kind"):
        TrainConfig(log_path=str(tmp_path), sampling_client_kind="mutable")  # type: ignore[arg-type]
