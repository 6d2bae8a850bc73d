"""Checkpoint administration through the unmodified SDK and its ``tinker`` CLI against the wire
simulator (these were 404s): TTLs, publishing, external weights and their signed download URLs,
``copy_weights``, and ``tinker checkpoint download``/``publish``/``set-ttl``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tinker
from safetensors.numpy import load_file
from tinker import types
from wire_clients import MODEL, tinker_cli, trained_run

from fakes.tinker import SimConfig
from fakes.tokenizer import load_tokenizer
from fakes.wire import RunningWireServer, start_in_thread

DAY = 86400


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWireServer]:
    with start_in_thread(SimConfig(root_dir=tmp_path_factory.mktemp("ckpt"))) as running:
        yield running


@pytest.fixture(scope="module")
def trained(server: RunningWireServer) -> Iterator[tuple[tinker.ServiceClient, tinker.TrainingClient]]:
    warnings.simplefilter("ignore", FutureWarning)
    service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
    yield service, trained_run(service)
    service.close("success").result()


def _checkpoint(rest: tinker.RestClient, path: str) -> types.Checkpoint:
    run_id = path.removeprefix("tinker://").split("/")[0]
    (found,) = [c for c in rest.list_checkpoints(run_id).result().checkpoints if c.tinker_path == path]
    return found


def _rest(server: RunningWireServer) -> tinker.RestClient:
    return tinker.RestClient(base_url=server.url, api_key="tml-test")


def test_ttl_and_publishing_through_the_rest_client(
    server: RunningWireServer, trained: tuple[tinker.ServiceClient, tinker.TrainingClient]
) -> None:
    _service, tc = trained
    rest = _rest(server)
    path = tc.save_state("ttl", ttl_seconds=DAY).result().path
    first = _checkpoint(rest, path)
    assert first.expires_at is not None and not first.public
    rest.set_checkpoint_ttl_from_tinker_path(path, None).result()
    assert _checkpoint(rest, path).expires_at is None
    with pytest.raises(tinker.BadRequestError, match="ttl_seconds must be between"):
        rest.set_checkpoint_ttl_from_tinker_path(path, 60).result()
    rest.publish_checkpoint_from_tinker_path(path).result()
    assert _checkpoint(rest, path).public
    rest.unpublish_checkpoint_from_tinker_path(path).result()
    assert not _checkpoint(rest, path).public
    with pytest.raises(tinker.NotFoundError):
        rest.publish_checkpoint_from_tinker_path(f"tinker://{tc.model_id}/weights/missing").result()


def test_external_weights_download_through_signed_urls(
    server: RunningWireServer,
    trained: tuple[tinker.ServiceClient, tinker.TrainingClient],
) -> None:
    _service, tc = trained
    rest = _rest(server)
    path = tc.save_weights_external("export").result().path
    assert path == f"tinker://{tc.model_id}/external_weights/export"
    assert _checkpoint(rest, path).checkpoint_type == "external"
    urls = rest.get_external_weights_urls(path).result().urls
    assert sorted(urls) == ["adapter_config.json", "adapter_model.safetensors"]
    with urllib.request.urlopen(urls["adapter_config.json"]) as answer:  # no API key, as from a bucket
        config = json.loads(answer.read())
    assert (config["base_model_name_or_path"], config["r"]) == (MODEL, 4)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urls["adapter_config.json"].replace("signature=", "signature=0"))
    assert refused.value.code == 403
    with pytest.raises(tinker.RequestFailedError, match="age encryption"):  # a failed future, as live
        tc.save_weights_external("secret", age_encryption_recipients=["age1xyz"]).result()


def test_copy_weights_makes_a_new_run_holding_the_checkpoint(
    server: RunningWireServer,
    trained: tuple[tinker.ServiceClient, tinker.TrainingClient],
) -> None:
    service, tc = trained
    rest = _rest(server)
    source = tc.save_weights_for_sampler("to-copy").result().path
    copied = rest.copy_weights(source, "proj-archive", ttl_seconds=DAY).result()
    assert copied != source and copied.endswith("/sampler_weights/to-copy")
    assert _checkpoint(rest, copied).expires_at is not None
    sampler = service.create_sampling_client(model_path=copied).result()
    prompt = types.ModelInput.from_ints(load_tokenizer(MODEL).encode("hi"))
    assert sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2)).result().sequences


@pytest.mark.slow
def test_the_cli_downloads_publishes_and_sets_ttls(
    server: RunningWireServer, trained: tuple[tinker.ServiceClient, tinker.TrainingClient], tmp_path: Path
) -> None:
    _service, tc = trained
    path = tc.save_state("for-cli").result().path

    def cli(*argv: str) -> str:
        return tinker_cli(server.url, *argv)

    cli("checkpoint", "download", path, "--output", str(tmp_path / "out"))
    (adapter,) = tmp_path.glob("out/**/adapter_model.safetensors")
    state = load_file(str(adapter))
    assert state and all(np.isfinite(v).all() for v in state.values())
    rest = _rest(server)
    every = rest.list_user_checkpoints().result().checkpoints
    assert not [
        c for c in every if c.tinker_path.endswith("/external_weights/download")
    ]  # the CLI's export, deleted
    cli("checkpoint", "publish", path)
    assert _checkpoint(rest, path).public
    cli("checkpoint", "set-ttl", path, "--ttl", str(DAY))
    assert _checkpoint(rest, path).expires_at is not None


def _send(
    server: RunningWireServer, method: str, route: str, body: str
) -> tuple[int, dict[str, str], object]:
    """A raw request to the simulator: status, headers, JSON body (what a client of any kind sees)."""
    request = urllib.request.Request(
        server.url + route,
        data=body.encode(),
        method=method,
        headers={"X-API-Key": "tml-test", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as answer:
            status, headers, raw = answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")  # not the service's shape (a bare 500)


def test_copying_a_checkpoint_into_a_run_that_holds_it_is_a_conflict_not_retried(
    server: RunningWireServer, trained: tuple[tinker.ServiceClient, tinker.TrainingClient]
) -> None:
    _, tc = trained
    source = tc.save_weights_for_sampler("copied-twice").result().path
    session = next(iter(server.server.service.sessions))
    body = json.dumps({"session_id": session, "model_seq_id": 90, "source_path": source})
    status, _, first = _send(server, "POST", "/api/v1/copy_weights", body)
    assert status == 200 and isinstance(first, dict), first
    status, headers, again = _send(server, "POST", "/api/v1/copy_weights", body)
    assert status == 409 and again == {"detail": f"checkpoint {first['tinker_path']} already exists"}
    assert headers.get("x-should-retry") == "false"  # the SDK retries a bare 409 (a lock timeout)
    assert _checkpoint(_rest(server), first["tinker_path"]).tinker_path == first["tinker_path"]  # kept


@pytest.mark.parametrize("body", ["{", "[3600]", '"x"', "null"])
def test_a_ttl_or_weights_info_body_that_is_no_json_object_is_a_400(
    server: RunningWireServer, trained: tuple[tinker.ServiceClient, tinker.TrainingClient], body: str
) -> None:
    _, tc = trained
    path = tc.save_state(f"ttl-body-{len(body)}", ttl_seconds=DAY).result().path
    run_id, kind, name = path.removeprefix("tinker://").split("/")
    ttl_route = f"/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/ttl"
    for method, route in (
        ("PUT", ttl_route),
        ("POST", "/api/v1/weights_info"),
        ("POST", "/api/v1/copy_weights"),
    ):
        status, _, answer = _send(server, method, route, body)
        assert status == 400 and isinstance(answer, dict) and set(answer) == {"detail"}, (route, answer)
    assert _checkpoint(_rest(server), path).expires_at is not None  # the TTL was left as it was
