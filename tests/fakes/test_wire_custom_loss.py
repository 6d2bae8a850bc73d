"""Server-side custom losses: with ``custom_loss_server_side`` on in the served client config, the
unmodified SDK uploads a traced loss (``create_custom_loss``, a 404 before) and runs it by id in one
``forward_backward``; the simulator rebuilds it only from its allowed operations."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tinker
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tinker import types
from tinker.lib.public_interfaces.custom_loss import encode_graph, trace_loss
from wire_clients import MODEL, sft_datum

from fakes.tinker import ServiceClient, SimConfig
from fakes.tinker.custom_losses import CustomLoss, CustomLosses
from fakes.wire import RunningWireServer, start_in_thread

RANKS: dict[str, types.CustomLossInputRank] = {"logprobs": 1, "weights": 1}


def neg_ll(logprobs, weights):  # type: ignore[no-untyped-def]
    loss = -(logprobs * weights).sum()
    return loss, {"custom/neg_ll:sum": loss, "custom/first:mean": logprobs[0]}


def _datum(text: str) -> types.Datum:
    return sft_datum(text, weights=True)


def _graph(fn, ranks=RANKS) -> tuple[tuple[types.CustomLossInput, ...], types.CustomLossGraph]:  # type: ignore[no-untyped-def]
    handle = trace_loss(fn, ranks, "s")
    return handle.inputs, encode_graph(handle)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWireServer]:
    config = {"custom_loss_server_side": True}
    with start_in_thread(
        SimConfig(root_dir=tmp_path_factory.mktemp("custom")), client_config=config
    ) as running:
        yield running


@pytest.mark.slow
def test_the_sdk_uploads_a_loss_and_trains_with_it_on_the_server(server: RunningWireServer) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
    handle = service.create_custom_loss(neg_ll, input_ranks=RANKS).result()
    assert handle.loss_id is not None and handle.loss_id.startswith(service.holder.get_session_id())
    custom_run = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    builtin_run = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    data = [_datum("hello there, general kenobi"), _datum("you are a bold one")]

    out = custom_run.forward_backward_custom(data, handle).result()
    ce = builtin_run.forward_backward(data, "cross_entropy").result()
    assert out.metrics["loss:sum"] == pytest.approx(ce.metrics["loss:sum"], rel=1e-5)
    assert out.metrics["custom/neg_ll:sum"] == pytest.approx(ce.metrics["loss:sum"], rel=1e-5)
    firsts = [float(o["logprobs"].to_numpy()[0]) for o in ce.loss_fn_outputs]
    assert out.metrics["custom/first:mean"] == pytest.approx(np.mean(firsts), rel=1e-4)  # :mean averages
    # the gradient is cross-entropy's: one identical step leaves both runs with the same weights
    for run in (custom_run, builtin_run):
        run.optim_step(types.AdamParams(learning_rate=0.05)).result()
    after = [r.forward(data, "cross_entropy").result().metrics["loss:sum"] for r in (custom_run, builtin_run)]
    assert after[0] == pytest.approx(after[1], rel=1e-5) and after[0] < ce.metrics["loss:sum"]

    with pytest.raises(tinker.RequestFailedError, match="no custom loss"):
        custom_run.forward_backward(data, "custom", {"loss_id": "someone-else:loss:0"}).result()
    session_id = service.holder.get_session_id()
    service.close("success").result()
    with pytest.raises(tinker.BadRequestError):  # the session's losses went with it
        server.server.service.sim._runtime.custom_losses.get(session_id, {"loss_id": handle.loss_id})


@pytest.mark.slow
def test_the_in_process_simulator_runs_a_created_loss_like_the_callable(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    service = ServiceClient(root_dir=tmp_path)
    handle = service.create_custom_loss(neg_ll, input_ranks=RANKS).result()
    run = service.create_lora_training_client(MODEL, rank=4, seed=0).result()
    data = [_datum("hello there")]
    by_id = run.forward_backward_custom(data, handle).result()
    ce = run.forward(data, "cross_entropy").result()
    assert by_id.metrics["custom/neg_ll:sum"] == pytest.approx(ce.metrics["loss:sum"], rel=1e-5)
    with pytest.raises(tinker.BadRequestError, match="rank"):
        bad = types.Datum(
            model_input=data[0].model_input,
            loss_fn_inputs={**data[0].loss_fn_inputs, "weights": np.ones((3, 2), dtype=np.float32)},
        )
        run.forward_backward_custom([bad], handle).result()


def _refused(graph: types.CustomLossGraph, inputs: tuple[types.CustomLossInput, ...], match: str) -> None:
    with pytest.raises(tinker.BadRequestError, match=match):
        CustomLosses().create("s", 0, "loss", inputs, graph)


def _with_node(graph: types.CustomLossGraph, index: int, **change: object) -> types.CustomLossGraph:
    nodes = list(graph.nodes)
    nodes[index] = nodes[index].model_copy(update=change)
    return types.CustomLossGraph(nodes=nodes)


def test_only_allowed_operations_are_rebuilt() -> None:
    inputs, graph = _graph(neg_ll)
    mul = next(i for i, n in enumerate(graph.nodes) if n.target == "operator.mul")
    summed = next(i for i, n in enumerate(graph.nodes) if n.op == "call_method")
    _refused(_with_node(graph, mul, target="torch.save"), inputs, "not an allowed operation")
    _refused(_with_node(graph, mul, target="os.system"), inputs, "may only call torch, math and operator")
    _refused(_with_node(graph, mul, target="builtins.open"), inputs, "may only call")
    _refused(_with_node(graph, summed, target="backward"), inputs, "not an allowed tensor method")
    _refused(_with_node(graph, summed, target="item"), inputs, "not an allowed tensor method")
    for calls_what_it_is_given in ("operator.call", "operator.methodcaller", "operator.attrgetter"):
        # call(methodcaller("item"), x) would run a refused method; attrgetter reads private attributes
        _refused(_with_node(graph, mul, target=calls_what_it_is_given), inputs, "not an allowed operation")
    _refused(_with_node(graph, mul, op="get_attr"), inputs, "reads only its inputs")
    _refused(
        _with_node(graph, mul, args=[{"ref": "later"}, {"ref": "weights"}]), inputs, "before it is defined"
    )
    _refused(_with_node(graph, mul, args=[{"pickle": "x"}, 1]), inputs, "cannot rebuild")
    _refused(graph, (inputs[0],), "the graph takes")
    _refused(types.CustomLossGraph(nodes=list(graph.nodes[:-1])), inputs, "output")


def test_a_rebuilt_loss_matches_the_traced_function_with_metrics_reduced_by_suffix() -> None:
    def shaped(logprobs, weights):  # type: ignore[no-untyped-def]
        scale = torch.clamp(weights, min=0.5)[..., : logprobs.shape[0]]
        loss = -(torch.exp(logprobs) * scale).sum() + torch.nn.functional.softplus(logprobs).mean()
        return loss, {"custom/size:sum": logprobs.new_ones(()) * logprobs.numel(), "custom/l:mean": loss}

    inputs, graph = _graph(shaped)
    loss = CustomLoss.build("s:loss:0", "s", "shaped", inputs, graph)
    logprobs = [
        torch.tensor([-1.0, -2.0, -0.5], requires_grad=True),
        torch.tensor([-0.1], requires_grad=True),
    ]
    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints([1] * len(lp)),
            loss_fn_inputs={
                "target_tokens": np.zeros(len(lp), dtype=np.int64),
                "weights": np.full(len(lp), w, dtype=np.float32),
            },
        )
        for lp, w in zip(logprobs, (0.2, 2.0), strict=True)
    ]
    total, metrics = loss.batch_loss(data, logprobs)
    expected = [
        shaped(lp, torch.tensor(d.loss_fn_inputs["weights"].data))
        for lp, d in zip(logprobs, data, strict=True)
    ]
    assert total.item() == pytest.approx(sum(e[0].item() for e in expected))
    assert metrics == {"custom/size:sum": 4.0, "custom/l:mean": pytest.approx(total.item() / 2)}
    total.backward()
    assert logprobs[0].grad is not None and torch.isfinite(logprobs[0].grad).all()


def clipped_ratio(logprobs, sampled, advantages):  # type: ignore[no-untyped-def]
    ratio = torch.exp(logprobs - sampled)
    loss = -torch.minimum(ratio * advantages, torch.clamp(ratio, 0.8, 1.2) * advantages).sum()
    return loss, {"custom/ratio:mean": ratio.mean()}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-8, 0), st.floats(-8, 0), st.floats(-2, 2)), min_size=1, max_size=6),
    st.sampled_from(["neg_ll", "clipped_ratio"]),
)
def test_a_rebuilt_loss_has_the_traced_functions_value_and_gradient(
    rows: list[tuple[float, float, float]], which: str
) -> None:
    fn, names = {
        "neg_ll": (neg_ll, ["weights"]),
        "clipped_ratio": (clipped_ratio, ["sampled", "advantages"]),
    }[which]
    inputs, graph = _graph(fn, {"logprobs": 1, **{n: 1 for n in names}})
    loss = CustomLoss.build("s:loss:0", "s", which, inputs, graph)
    columns = [np.asarray(c, dtype=np.float32) for c in zip(*rows, strict=True)]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1] * len(rows)),
        loss_fn_inputs={
            "target_tokens": np.zeros(len(rows), dtype=np.int64),
            **{n: columns[1 + i] for i, n in enumerate(names)},
        },
    )
    rebuilt_lp = torch.tensor(columns[0], requires_grad=True)
    direct_lp = torch.tensor(columns[0], requires_grad=True)
    rebuilt, _ = loss.batch_loss([datum], [rebuilt_lp])
    direct, _ = fn(direct_lp, *(torch.tensor(columns[1 + i]) for i in range(len(names))))
    rebuilt.backward()
    direct.backward()
    assert rebuilt.item() == pytest.approx(direct.item(), rel=1e-6, abs=1e-6)
    assert rebuilt_lp.grad is not None and direct_lp.grad is not None
    assert torch.allclose(rebuilt_lp.grad, direct_lp.grad)
