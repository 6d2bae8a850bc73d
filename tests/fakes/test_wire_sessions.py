"""The wire simulator releases what a session owns when the unmodified SDK closes it or stops
heartbeating, and answers prompt logprobs through the wire as the in-process simulator does."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker import types

from fakes.tinker import ServiceClient, SimConfig
from fakes.tokenizer import load_tokenizer
from fakes.wire import RunningWireServer, start_in_thread

MODEL = "Qwen/Qwen3-4B-Instruct-2507"


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", FutureWarning)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningWireServer]:
    with start_in_thread(SimConfig(root_dir=tmp_path), session_expiry_s=1.0) as running:
        yield running


def _prompt(text: str) -> types.ModelInput:
    return types.ModelInput.from_ints(load_tokenizer(MODEL).encode(text))


def _train_and_sample(service: tinker.ServiceClient) -> str:
    tc = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    tokens = _prompt("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>").to_ints()
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": np.array(tokens[1:])},
    )
    tc.forward_backward([datum], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=0.01)).result()
    sampler = tc.save_weights_and_get_sampling_client()
    sampler.sample(
        _prompt("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
        1,
        types.SamplingParams(max_tokens=4),
    ).result()
    return tc.model_id.split(":")[0]


def _owned(server: RunningWireServer, session_id: str) -> int:
    wire = server.server.service
    return sum(k.startswith(session_id) for k in [*wire.runs, *wire.samplers])


@pytest.mark.slow
def test_closing_the_sdk_session_releases_its_runs_and_samplers(server: RunningWireServer) -> None:
    service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
    session_id = _train_and_sample(service)
    assert _owned(server, session_id) == 2
    service.close("success").result()
    assert _owned(server, session_id) == 0
    assert server.server.service.sessions[session_id] == "finished"
    assert not [k for k in server.server.service._submitted if session_id in str(k)]
    assert len(server.server.service.promises) == 0  # its requests' results went with it


def test_a_session_that_stops_heartbeating_expires(server: RunningWireServer) -> None:
    service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")  # heartbeats every 10 s: too late
    session_id = _train_and_sample(service)
    deadline = time.monotonic() + 10
    while _owned(server, session_id):
        assert time.monotonic() < deadline, "the idle session was never released"
        time.sleep(0.2)
    assert server.server.service.sessions[session_id] == "finished"
    assert server.server.service.heartbeat(session_id) == "finished"
    assert len(server.server.service.promises) == 0
    with pytest.raises(tinker.APIStatusError) as raised:
        service.create_lora_training_client(MODEL, rank=4).result()
    assert raised.value.status_code == 410
    service.close("success").result()  # stops its heartbeats, which would outlive the server


def test_prompt_logprobs_through_the_wire_equal_the_in_process_ones(tmp_path: Path) -> None:
    text = (
        "<|im_start|>system\n"
        + "You are a careful assistant. " * 30
        + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    prompt = _prompt(text + "<|im_start|>assistant\n")
    assert prompt.length > 170
    params = types.SamplingParams(max_tokens=4, seed=1)
    server = start_in_thread(SimConfig(root_dir=tmp_path))  # default expiry: this test is about logprobs
    service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
    wire = service.create_sampling_client(base_model=MODEL).result()
    local = ServiceClient(root_dir=tmp_path).create_sampling_client(base_model=MODEL).result()
    answers = [
        client.sample(prompt, 1, params, include_prompt_logprobs=True, topk_prompt_logprobs=4).result()
        for client in (wire, local)
    ]
    assert answers[0].prompt_logprobs == pytest.approx(answers[1].prompt_logprobs)
    assert len(answers[0].topk_prompt_logprobs) == prompt.length
    for got, want in zip(
        answers[0].topk_prompt_logprobs[1:], answers[1].topk_prompt_logprobs[1:], strict=True
    ):
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [lp for _, lp in got] == pytest.approx([lp for _, lp in want])
    assert wire.compute_logprobs(prompt).result() == pytest.approx(answers[1].prompt_logprobs)
    service.close("success").result()
    server.close()


def test_zstd_forward_backward_bodies_pass_the_http_route(tmp_path: Path) -> None:
    """With ``proto_compress_fwdbwd`` on, the SDK zstd-compresses forward_backward bodies; aiohttp
    refused them (400, no zstd decoder) before the codec saw them."""
    with start_in_thread(
        SimConfig(root_dir=tmp_path), client_config={"proto_compress_fwdbwd": True}
    ) as server:
        service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
        tc = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
        tokens = _prompt("hello there friend " * 50).to_ints()
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": np.array(tokens[1:])},
        )
        wire = tc.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].data
        local = ServiceClient(root_dir=tmp_path).create_lora_training_client(MODEL, rank=4, seed=0).result()
        expected = local.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].data
        assert wire == pytest.approx(expected)
        service.close("success").result()
