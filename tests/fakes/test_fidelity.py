"""Fidelity: code written for the live Tinker service, run unchanged against the wire simulator.

tinker-cookbook's own ``recipes/sl_loop.py`` and ``recipes/rl_loop.py`` run through their ``main``
with tiny settings (their hub datasets replaced by synthetic rows of the same columns, their
tokenizer by the offline one), and the SDK's documented calls run one by one as its docstrings
show them: training, sampling, checkpoints, REST, futures and the async variants. Nothing here
knows the server is a simulator beyond its URL. What the simulator does not serve is listed in
``fakes/README.md``.
"""

from __future__ import annotations

import asyncio
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chz
import datasets
import numpy as np
import pytest
import tinker
import torch
from tinker import types
from tinker_cookbook.tokenizer_utils import get_tokenizer

from fakes.tinker import SimConfig
from fakes.tokenizer import register_offline_tokenizers
from fakes.wire import RunningWireServer, start_in_thread

MODEL = "Qwen/Qwen3-4B-Instruct-2507"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWireServer]:
    register_offline_tokenizers()
    with start_in_thread(SimConfig(root_dir=tmp_path_factory.mktemp("fidelity"))) as running:
        yield running
        # An SDK session left open heartbeats until the process exits, long after this server
        # is gone, and warns of it to whatever stream pytest has closed by then.
        active = [sid for sid, state in running.server.service.sessions.items() if state == "active"]
        assert not active, f"SDK sessions left open: {active}"


@pytest.fixture
def live_env(server: RunningWireServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The environment a user of the live service has: a base URL and an API key. The cookbook's
    recipes open a ``tinker.ServiceClient`` and never close it (a process that ends takes its
    session along): the ones a test opens are closed when it ends."""
    monkeypatch.setenv("TINKER_BASE_URL", server.url)
    monkeypatch.setenv("TINKER_API_KEY", "tml-fidelity")
    warnings.simplefilter("ignore", FutureWarning)
    opened: list[tinker.ServiceClient] = []

    class ClosedAfterTheTest(tinker.ServiceClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(tinker, "ServiceClient", ClosedAfterTheTest)
    yield server.url
    for service in opened:
        service.close("success").result()


def _hub(monkeypatch: pytest.MonkeyPatch, splits: dict[str, list[dict[str, Any]]]) -> None:
    """``datasets.load_dataset`` answers these rows instead of downloading (no hub access here)."""
    fake = datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)


def _metrics(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_cookbook_sl_loop_trains_saves_and_resumes(
    live_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tinker_cookbook.recipes import sl_loop

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"{i} + {i} = {2 * i}."},
            ]
        }
        for i in range(12)
    ]
    _hub(monkeypatch, {"train": rows})
    config = sl_loop.Config(
        base_url=live_env,
        log_path=str(tmp_path),
        model_name=MODEL,
        batch_size=3,
        lora_rank=4,
        learning_rate=1e-2,
        save_every=2,
        max_steps=3,
    )
    sl_loop.main(config)
    first = _metrics(tmp_path)
    assert [m["step"] for m in first] == [0, 1, 2]
    assert all(math.isfinite(m["train_mean_nll"]) and m["train_mean_nll"] > 0 for m in first)
    assert first[-1]["train_mean_nll"] < first[0]["train_mean_nll"]  # it learns the rows
    saved = [json.loads(line) for line in (tmp_path / "checkpoints.jsonl").read_text().splitlines()]
    assert {"000002", "final"} <= {c["name"] for c in saved}
    # a second run resumes from the last checkpoint ("final" records the epoch's end, so it has
    # nothing left to train) through create_training_client_from_state_with_optimizer, and saves again
    sl_loop.main(chz.replace(config, max_steps=None))
    assert len(_metrics(tmp_path)) == len(first)
    resaved = (tmp_path / "checkpoints.jsonl").read_text().splitlines()
    assert len(resaved) == len(saved) + 1 and json.loads(resaved[-1])["name"] == "final"


@pytest.mark.slow
def test_the_cookbook_rl_loop_samples_grades_and_trains(
    live_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tinker_cookbook.recipes import rl_loop

    rows = [{"question": f"What is {i} + 2?", "answer": f"{i} plus 2.\n#### {i + 2}"} for i in range(4)]
    _hub(monkeypatch, {"train": rows, "test": rows})
    config = rl_loop.Config(
        base_url=live_env,
        log_path=str(tmp_path),
        model_name=MODEL,
        batch_size=2,
        group_size=4,
        lora_rank=4,
        max_tokens=24,
        save_every=0,
        max_steps=2,
    )
    rl_loop.main(config)
    metrics = _metrics(tmp_path)
    assert [m["progress/batch"] for m in metrics] == [0, 1]
    assert all(0.0 <= m["reward/total"] <= 1.0 for m in metrics)


@pytest.mark.slow
def test_the_sdks_documented_calls_one_by_one(live_env: str, tmp_path: Path) -> None:
    service = tinker.ServiceClient()  # base URL and key from the environment, as documented
    supported = {m.model_name for m in service.get_server_capabilities().supported_models}
    assert MODEL in supported
    training = service.create_lora_training_client(base_model=MODEL, rank=4)
    tokenizer = get_tokenizer(MODEL)  # the cookbook's (offline here); the SDK's get_tokenizer reads the hub
    assert training.get_info().model_data.model_name == MODEL
    tokens = tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": np.array(tokens[1:]), "weights": np.ones(len(tokens) - 1)},
    )
    before = training.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    fwd = training.forward_backward([datum], "cross_entropy")  # futures pipeline: submit both, then wait
    step = training.optim_step(types.AdamParams(learning_rate=1e-2))
    assert fwd.result().metrics["loss:sum"] > 0 and step.result() is not None

    def neg_ll(
        data: list[types.Datum], logprobs: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = -sum(
            (lp * torch.tensor(d.loss_fn_inputs["weights"].data)).sum()
            for d, lp in zip(data, logprobs, strict=True)
        )
        return loss, {"neg_ll": float(loss)}

    custom = training.forward_backward_custom([datum], neg_ll).result()
    assert custom.metrics["neg_ll"] > 0

    def traced_neg_ll(
        logprobs: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = -(logprobs * weights).sum()
        return loss, {"custom/neg_ll:sum": loss}

    # the documented create_custom_loss example; with the served default config it runs client-side
    handle = service.create_custom_loss(traced_neg_ll, input_ranks={"logprobs": 1, "weights": 1}).result()
    traced = training.forward_backward_custom([datum], handle).result()
    assert handle.loss_id is None and traced.metrics["custom/neg_ll:sum"] == pytest.approx(
        custom.metrics["neg_ll"]
    )
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    after = training.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    assert after.sum() > before.sum()

    state = training.save_state("docs-state").result().path
    sampler_path = training.save_weights_for_sampler("docs-sampler").result().path
    sampler = service.create_sampling_client(model_path=sampler_path)
    prompt = types.ModelInput.from_ints(
        tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    )
    params = types.SamplingParams(max_tokens=8, temperature=1.0, stop=["<|im_end|>"])
    result = sampler.sample(prompt=prompt, num_samples=2, sampling_params=params).result()
    assert len(result.sequences) == 2 and all(s.logprobs for s in result.sequences)
    logprobs = sampler.compute_logprobs(prompt).result()
    assert logprobs[0] is None and len(logprobs) == prompt.length

    resumed = service.create_training_client_from_state(state)
    assert resumed.get_info().model_data.model_name == MODEL
    training.load_state(state).result()

    rest = tinker.RestClient()
    run = rest.get_training_run_by_tinker_path(state).result()
    assert run.base_model == MODEL
    paths = {c.tinker_path for c in rest.list_checkpoints(run.training_run_id).result().checkpoints}
    assert {state, sampler_path} <= paths
    rest.delete_checkpoint_from_tinker_path(sampler_path).result()
    assert sampler_path not in {
        c.tinker_path for c in rest.list_checkpoints(run.training_run_id).result().checkpoints
    }

    async def async_variants() -> None:  # the same calls awaited, as the docstrings show
        training_async = await service.create_lora_training_client_async(base_model=MODEL, rank=4)
        out = await training_async.forward_backward([datum], "cross_entropy")
        assert out.metrics["loss:sum"] > 0
        await training_async.optim_step(types.AdamParams(learning_rate=1e-3))
        sampling = await training_async.save_weights_and_get_sampling_client()
        answers = await asyncio.gather(*(sampling.sample(prompt, 1, params) for _ in range(3)))
        assert all(len(a.sequences) == 1 for a in answers)
        assert (await rest.get_server_capabilities()).supported_models

    asyncio.run(async_variants())
    service.close("success").result()


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["sync", "async", "stream_minibatch"])
def test_the_cookbook_math_rl_arithmetic_recipe_trains_in_each_schedule(
    live_env: str, tmp_path: Path, schedule: str
) -> None:
    """``recipes/math_rl/train.py``'s ``cli_main`` (arithmetic: synthetic problems, no hub), through the
    cookbook's ``rl/train.py`` in its sync, async (off-policy) and stream-minibatch schedules."""
    from tinker_cookbook.recipes.math_rl import train
    from tinker_cookbook.rl.train import StreamMinibatchConfig

    config = train.CLIConfig(
        base_url=live_env,
        log_path=str(tmp_path),
        model_name=MODEL,
        lora_rank=4,
        group_size=2,
        groups_per_batch=4,
        max_tokens=5,
        learning_rate=1e-2,
        eval_every=0,
        save_every=0,
        max_steps=2,
        behavior_if_log_dir_exists="delete",
        max_steps_off_policy=1 if schedule == "async" else None,
        stream_minibatch_config=(
            StreamMinibatchConfig(groups_per_batch=4, num_minibatches=2)
            if schedule == "stream_minibatch"
            else None
        ),
    )
    asyncio.run(train.cli_main(config))
    metrics = _metrics(tmp_path)
    trained = [m for m in metrics if "env/all/reward/total" in m]
    assert len(trained) == 2, [sorted(m) for m in metrics]
    assert all(math.isfinite(m["env/all/reward/total"]) for m in trained)
