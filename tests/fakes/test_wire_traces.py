"""Session traces (a 404 before): ``RestClient.export_session_trace`` and ``tinker session
export-trace`` get a signed URL of a Perfetto trace of the session's requests from the wire simulator."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tinker
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent
from tinker import types
from wire_clients import tinker_cli

from fakes.tinker import SimConfig
from fakes.tokenizer import load_tokenizer
from fakes.wire import RunningWireServer, start_in_thread
from fakes.wire.futures import PromiseTable
from fakes.wire.traces import Span, Timeline, build_trace

MODEL = "Qwen/Qwen3-4B-Instruct-2507"


def _slices(trace_bytes: bytes) -> tuple[dict[int, str], list[tuple[str, int, int, int]]]:
    """Track names by uuid, and each slice as (name, track, begin, end), checking that they nest."""
    trace = Trace.FromString(trace_bytes)
    tracks = {
        p.track_descriptor.uuid: p.track_descriptor.name
        for p in trace.packet
        if p.HasField("track_descriptor")
    }
    open_: dict[int, list[tuple[str, int]]] = {}
    slices = []
    for packet in trace.packet:
        if not packet.HasField("track_event"):
            continue
        event = packet.track_event
        assert event.track_uuid in tracks
        if event.type == TrackEvent.TYPE_SLICE_BEGIN:
            open_.setdefault(event.track_uuid, []).append((event.name, packet.timestamp))
        else:
            name, begin = open_[event.track_uuid].pop()
            assert packet.timestamp >= begin
            slices.append((name, event.track_uuid, begin, packet.timestamp))
    assert not any(open_.values())
    return tracks, slices


async def test_overlapping_requests_of_one_track_go_on_lanes_that_nest() -> None:
    table, timeline = PromiseTable(asyncio.get_running_loop()), Timeline()
    promises = [table.new("s") for _ in range(3)]
    for promise in promises:
        timeline.record("s", "s:sample:0", "asample", promise)
    timeline.record("s", "s:sample:0", "asample", promises[0])  # a retried submission: recorded once
    promises[1].settle("done")
    await asyncio.sleep(0)
    spans = timeline.spans("s")
    assert spans is not None and len(spans) == 3 and spans[1].end_ns is not None
    tracks, slices = _slices(build_trace("s", spans, spans[-1].start_ns + 10))
    assert len(slices) == 3 and {tracks[t] for _, t, _, _ in slices} == {f"s:sample:0 #{i}" for i in range(3)}
    # one that starts after another ended reuses its lane
    done = spans[1]
    assert done.end_ns is not None
    later = Span("s:sample:0", "asample", done.end_ns + 100, done.end_ns + 200)
    assert len({t for _, t, _, _ in _slices(build_trace("s", [done, later], later.end_ns))[1]}) == 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWireServer]:
    with start_in_thread(SimConfig(root_dir=tmp_path_factory.mktemp("traces"))) as running:
        yield running


@pytest.fixture(scope="module")
def session_id(server: RunningWireServer) -> str:
    """A finished session that trained a step and sampled."""
    warnings.simplefilter("ignore", FutureWarning)
    service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
    tc = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    tokens = load_tokenizer(MODEL).encode("hello there, general kenobi")
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": np.array(tokens[1:])},
    )
    tc.forward_backward([datum], "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=0.01)).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    sampler.sample(types.ModelInput.from_ints(tokens[:4]), 2, types.SamplingParams(max_tokens=4)).result()
    session = service.holder.get_session_id()
    service.close("success").result()
    return session


@pytest.mark.slow
def test_the_rest_client_exports_a_trace_of_the_sessions_requests(
    server: RunningWireServer, session_id: str
) -> None:
    rest = tinker.RestClient(base_url=server.url, api_key="tml-test")
    url = rest.export_session_trace(session_id).result()
    with urllib.request.urlopen(url) as answer:  # no API key: a signed URL
        tracks, slices = _slices(answer.read())
    names = {name for name, *_ in slices}
    assert {"create_model", "forward_backward", "optim_step", "save_weights_for_sampler", "asample"} <= names
    assert f"session {session_id}" in tracks.values()
    assert any(name.startswith(f"{session_id}:train:0") for name in tracks.values())
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(url.replace("signature=", "signature=0"))
    with pytest.raises(tinker.NotFoundError):
        rest.export_session_trace("no-such-session").result()


@pytest.mark.slow
def test_the_cli_exports_and_downloads_a_trace(
    server: RunningWireServer, session_id: str, tmp_path: Path
) -> None:
    out = tmp_path / "t.pftrace"
    tinker_cli(server.url, "session", "export-trace", session_id, "--output", str(out))
    assert "optim_step" in {name for name, *_ in _slices(out.read_bytes())[1]}
    url = tinker_cli(server.url, "session", "export-trace", session_id, "--url-only").strip()
    assert url.startswith(server.url) and "signature=" in url
