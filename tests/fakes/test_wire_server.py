"""The wire simulator's pieces: protobuf bodies against the SDK's own converters, per-run
ordering by ``seq_id``, long polls that answer when the result exists, HTTP error answers."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import re
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest
import zstandard
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import deserialize_forward_backward_output, deserialize_sample_response
from tinker.types.topk_logprobs import TopkLogprobs

from fakes.tinker import ServiceClient, SimConfig
from fakes.wire import RunningWireServer, WireFaults, start_in_thread
from fakes.wire.codec import (
    CodecError,
    decode_forward_backward,
    encode_forward_backward_output,
    encode_sample_response,
)
from fakes.wire.faults import FaultInjector
from fakes.wire.futures import PromiseTable
from fakes.wire.memory import map_large_blocks
from fakes.wire.runs import Run, done_future, in_seq_order
from fakes.wire.service import WireService


def _request(config: dict[str, float | str] | None) -> types.ForwardBackwardRequest:
    sparse = types.TensorData(
        data=[0.5, 2.0],
        dtype="float32",
        shape=[2, 3],
        sparse_crow_indices=[0, 1, 2],
        sparse_col_indices=[2, 0],
    )
    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints([1, 2, 3]),
            loss_fn_inputs={
                "target_tokens": types.TensorData.from_numpy(np.array([2, 3, 4], dtype=np.int64)),
                "advantages": types.TensorData.from_numpy(np.array([0.0, 1.5, -2.0], dtype=np.float32)),
                "extra": sparse,
            },
        ),
        types.Datum(
            model_input=types.ModelInput.from_ints([7]),
            loss_fn_inputs={"target_tokens": types.TensorData(data=[8], dtype="int64")},
        ),
    ]
    return types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn="ppo", loss_fn_config=config),
        model_id="s:train:0",
        seq_id=5,
    )


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("config", [None, {"clip_low_threshold": 0.8, "mode": "token"}])
def test_forward_backward_body_decodes_what_the_sdk_encodes(
    compressed: bool, config: dict[str, float | str] | None
) -> None:
    request = _request(config)
    msg = forward_backward_request_to_proto(request)
    msg.forward_only = True
    body = msg.SerializeToString()
    if compressed:
        body = zstandard.ZstdCompressor().compress(body)
    call = decode_forward_backward(body, "zstd" if compressed else None)
    assert (call.model_id, call.seq_id, call.forward_only, call.loss_fn) == ("s:train:0", 5, True, "ppo")
    assert call.loss_fn_config == config
    for got, sent in zip(call.data, request.forward_backward_input.data, strict=True):
        assert got.model_input.to_ints() == sent.model_input.to_ints()
        assert set(got.loss_fn_inputs) == set(sent.loss_fn_inputs)
        for name, tensor in sent.loss_fn_inputs.items():
            decoded = got.loss_fn_inputs[name]
            assert decoded.dtype == tensor.dtype
            assert np.array_equal(decoded.to_numpy(), tensor.to_numpy())


def test_undecodable_bodies_are_codec_errors() -> None:
    with pytest.raises(CodecError):
        decode_forward_backward(b"\xff\xff\xff", None)
    with pytest.raises(CodecError):
        decode_forward_backward(b"not zstd", "zstd")


def test_sample_response_encodes_what_the_sdk_decodes() -> None:
    topk = TopkLogprobs(
        token_ids=np.array([[5, 6], [7, 0]], dtype=np.int32),
        logprobs=np.array([[-0.1, -2.0], [-0.5, -99999.0]], dtype=np.float32),
    )
    response = types.SampleResponse(
        sequences=[
            types.SampledSequence(
                stop_reason="stop",
                sequence_id="a",
                tokens_np=np.array([5, 7], dtype=np.int32),
                logprobs_np=np.array([-0.1, -0.5], dtype=np.float32),
                topk_logprobs_np=topk,
            ),
            types.SampledSequence(
                stop_reason="length",
                sequence_id="b",
                tokens_np=np.array([9], dtype=np.int32),
                logprobs_np=np.array([-3.25], dtype=np.float32),
            ),
        ],
        prompt_logprobs_np=np.array([np.nan, -1.5, -0.25], dtype=np.float32),
        topk_prompt_logprobs_np=topk,
    )
    decoded = deserialize_sample_response(encode_sample_response(response))
    for got, sent in zip(decoded.sequences, response.sequences, strict=True):
        assert (got.tokens, got.logprobs, got.stop_reason) == (sent.tokens, sent.logprobs, sent.stop_reason)
        assert got.topk_logprobs == sent.topk_logprobs
    assert decoded.prompt_logprobs == [None, -1.5, -0.25]
    assert decoded.topk_prompt_logprobs == response.topk_prompt_logprobs


def test_forward_backward_output_encodes_what_the_sdk_decodes() -> None:
    output = types.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {
                "logprobs": types.TensorData.from_numpy(np.array([-1.0, -0.5, -0.25], dtype=np.float32)),
                "pair": types.TensorData.from_numpy(np.arange(4, dtype=np.float32).reshape(2, 2)),
            },
            {
                "logprobs": types.TensorData.from_numpy(np.array([-2.0], dtype=np.float32)),
                "pair": types.TensorData.from_numpy(np.ones((1, 2), dtype=np.float32)),
            },
        ],
        metrics={"loss:sum": -3.5},
    )
    decoded = deserialize_forward_backward_output(encode_forward_backward_output(output))
    assert decoded.metrics == {"loss:sum": -3.5}
    assert decoded.loss_fn_output_type == "ArrayRecord"
    for got, sent in zip(decoded.loss_fn_outputs, output.loss_fn_outputs, strict=True):
        for name in ("logprobs", "pair"):
            assert got[name].shape == sent[name].shape
            assert np.array_equal(got[name].to_numpy(), sent[name].to_numpy())


async def test_requests_of_a_run_apply_in_seq_id_order() -> None:
    run = Run(client=None, session_id="s")  # type: ignore[arg-type]
    applied: list[int] = []
    table = PromiseTable(asyncio.get_running_loop())

    def submit(seq: int):  # type: ignore[no-untyped-def]
        def go():  # type: ignore[no-untyped-def]
            applied.append(seq)
            return table.new()

        return go

    late = [asyncio.create_task(in_seq_order(run, seq, submit(seq))) for seq in (3, 2)]
    await asyncio.sleep(0)
    assert applied == []  # 2 and 3 wait for 1
    await in_seq_order(run, 1, submit(1))
    await asyncio.gather(*late)
    assert applied == [1, 2, 3] and run.next_seq == 4


async def test_a_retry_waiting_beside_its_original_is_applied_once(tmp_path: Path) -> None:
    service = WireService(
        ServiceClient(root_dir=tmp_path), FaultInjector(WireFaults()), asyncio.get_running_loop()
    )
    run = Run(client=None, session_id="s")  # type: ignore[arg-type]
    applied: list[str] = []

    def submit(name: str):  # type: ignore[no-untyped-def]
        def go():  # type: ignore[no-untyped-def]
            applied.append(name)
            return service._track(("train", "m", 2), done_future(name))

        return go

    waiting = [
        asyncio.create_task(service._apply(run, ("train", "m", 2), 2, submit(n))) for n in ("a", "retry")
    ]
    await asyncio.sleep(0)
    await service._apply(
        run, ("train", "m", 1), 1, lambda: service._track(("train", "m", 1), done_future("one"))
    )
    first, retried = await asyncio.gather(*waiting)
    assert applied == ["a"] and first is retried


async def test_a_promise_wakes_its_poller_when_settled() -> None:
    table = PromiseTable(asyncio.get_running_loop())
    promise = table.new()
    asyncio.get_running_loop().call_later(0.05, promise.settle, "done")
    start = time.perf_counter()
    assert await promise.wait(30.0)
    assert time.perf_counter() - start < 5.0
    assert promise.outcome() == ("done", None)
    assert not await table.new().wait(0.01)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWireServer]:
    root: Path = tmp_path_factory.mktemp("wire")
    with start_in_thread(SimConfig(root_dir=root), poll_hold_s=0.05) as running:
        yield running


def _post(server: RunningWireServer, route: str, body: object, key: str = "tml-test") -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/{route}", json=body, headers={"X-API-Key": key}, timeout=30)


def test_http_answers_for_bad_keys_unknown_futures_and_bad_bodies(server: RunningWireServer) -> None:
    assert httpx.get(f"{server.url}/api/v1/healthz").json() == {"status": "ok"}
    assert _post(server, "create_session", {}, key="sk-nope").status_code == 401
    assert _post(server, "retrieve_future", {"request_id": "req-missing"}).status_code == 404
    assert _post(server, "create_session", {"tags": 3}).status_code == 400
    response = _post(server, "create_model", {"session_id": "nope", "model_seq_id": 0, "base_model": "x"})
    assert response.status_code == 404


def test_a_pending_future_polls_as_try_again_until_it_completes(server: RunningWireServer) -> None:
    session = _post(server, "create_session", {"tags": [], "user_metadata": None, "sdk_version": "t"}).json()
    pending = server.server.service.promises.new()
    body = {"request_id": pending.request_id}
    answer = _post(server, "retrieve_future", body).json()
    assert answer == {"type": "try_again", "request_id": pending.request_id, "queue_state": "active"}
    server.server.service.promises._loop.call_soon_threadsafe(
        pending.settle, types.OptimStepResponse(metrics={"x": 1.0})
    )
    deadline = time.monotonic() + 10
    while (answer := _post(server, "retrieve_future", body).json()).get("type") == "try_again":
        assert time.monotonic() < deadline
    assert answer["metrics"] == {"x": 1.0}
    assert _post(server, "session_heartbeat", {"session_id": session["session_id"]}).status_code == 200
    finish = httpx.post(
        f"{server.url}/api/v1/sessions/{session['session_id']}/finish",
        json={},
        headers={"X-API-Key": "tml-t"},
    )
    assert finish.status_code == 200
    assert _post(server, "session_heartbeat", {"session_id": session["session_id"]}).status_code == 410


def test_faults_follow_the_seed() -> None:
    injectors = [FaultInjector(WireFaults(error_5xx_rate=0.3, seed=s)) for s in (4, 4, 5)]
    draws = [[injector.draw(False) for _ in range(50)] for injector in injectors]
    assert draws[0] == draws[1] != draws[2]
    assert any(d is not None for d in draws[0]) and any(d is None for d in draws[0])
    assert all(d is None for d in [FaultInjector(WireFaults()).draw(True) for _ in range(20)])


def test_fault_knobs_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_TINKER_WIRE_DROP_RATE", "0.1")
    monkeypatch.setenv("AGL_TINKER_WIRE_SEED", "9")
    faults = WireFaults.from_env(try_again_rate=0.2)
    assert (faults.drop_rate, faults.seed, faults.try_again_rate) == (0.1, 9, 0.2)
    with pytest.raises(ValueError):
        WireFaults(drop_rate=0.7, error_5xx_rate=0.6)


@pytest.mark.slow
def test_sim_server_command_prints_a_loopback_url_that_serves(tmp_path: Path) -> None:
    env = {**os.environ, "AGL_TINKER_SIM_DIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agl_tinker.cli", "sim-server"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match is not None and int(match.group(1)) > 0, line
        assert httpx.get(f"{match.group(0)}/api/v1/healthz", timeout=30).json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(60)


async def test_a_settled_promise_does_not_keep_the_work_result_alive() -> None:
    """A create-model future's result is the whole training run: the promise's callbacks must not
    form a cycle with it (before: freed only by a rare full collection, +23 MB per session)."""

    class Run:  # stands for a TrainingClient
        pass

    table = PromiseTable(asyncio.get_running_loop())
    work: Future[Run] = Future()
    run = Run()
    alive = weakref.ref(run)
    promise = table.track(work, lambda r: type(r).__name__, owner="s")
    work.set_result(run)
    del run
    gc.disable()
    try:
        assert await promise.wait(5.0) and promise.outcome() == ("Run", None)
        del work
        assert alive() is None  # freed by reference counting alone
    finally:
        gc.enable()


async def test_releasing_a_session_forgets_its_promises_only() -> None:
    table = PromiseTable(asyncio.get_running_loop())
    mine = [table.new("s1"), table.new("s1")]
    other = table.new("s2")
    assert table.release("s1") == 2
    assert [table.get(p.request_id) for p in mine] == [None, None]
    assert table.get(other.request_id) is other and len(table) == 1


def test_large_blocks_are_mapped_on_glibc() -> None:
    assert map_large_blocks() is (platform.libc_ver()[0] == "glibc")
