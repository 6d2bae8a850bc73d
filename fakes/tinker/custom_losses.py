"""Server-side custom losses: a traced loss (``types.CustomLossGraph``) stored per session and run by id.

The SDK's contract (``ServiceClient.create_custom_loss`` with the served client config's
``custom_loss_server_side`` on): the client traces a per-datum loss ``fn(logprobs, *inputs) ->
(loss, metrics)`` with ``torch.fx`` and uploads its nodes as plain data; the service rebuilds it
"from its own list of allowed operations" and answers a ``loss_id``; ``forward_backward(data,
"custom", {"loss_id": id})`` then runs it on every datum, sums the losses, and reduces each metric by
its suffix (``:sum`` adds over datums, ``:mean`` averages), as the SDK's client-side runner does.

Nothing in a graph is executed as code: each node is interpreted against an allow-list built from
torch's own list of tensor functions (``torch.overrides.get_overridable_functions``: pure tensor
operations, so no ``torch.load``/``torch.save``), ``math`` and ``operator`` (less ``call``,
``attrgetter`` and ``methodcaller``, which would reach the rest), and tensor methods other than
those that leave torch or run backward. A graph with anything else is refused with
``tinker.BadRequestError``, as are inputs that do not match their declared ranks.
"""

from __future__ import annotations

import importlib
import math
import operator
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import tinker
import torch
from tinker import types

from . import errors

_METRIC_KEY = re.compile(r"custom/[a-z0-9_./-]{1,64}:(sum|mean)")
_MODULES = ("torch", "math", "operator")
# Tensor methods that leave torch, run backward, or reach the process (hooks, storage, pinning).
_REFUSED_METHODS = frozenset(
    {
        "backward",
        "item",
        "numpy",
        "tolist",
        "register_hook",
        "register_post_accumulate_grad_hook",
        "retain_grad",
        "requires_grad_",
        "share_memory_",
        "pin_memory",
        "storage",
        "untyped_storage",
        "data_ptr",
        "cuda",
        "apply_",
        "map_",
        "map2_",
        "record_stream",
        "set_",
    }
)
# ``operator`` callables that call or read whatever a value names: through them a graph would run
# the refused methods above (``call(methodcaller("item"), x)``) or read private attributes.
_REFUSED_OPERATORS = frozenset({operator.call, operator.attrgetter, operator.methodcaller})
_TORCH_CONSTANTS: dict[str, type] = {
    "dtype": torch.dtype,
    "layout": torch.layout,
    "memory_format": torch.memory_format,
}


@cache
def _allowed_functions() -> frozenset[Any]:
    """Every callable a ``call_function`` node may name: torch's tensor functions, math, operator."""
    overridable = torch.overrides.get_overridable_functions()
    namespaces = [torch, torch.functional, torch.nn.functional, torch.special, torch.linalg]
    allowed: set[Any] = {fn for ns in namespaces for fn in overridable.get(ns, [])}
    for module in (math, operator):
        allowed |= {v for k, v in vars(module).items() if callable(v) and not k.startswith("_")}
    return frozenset(allowed - _REFUSED_OPERATORS)


@cache
def _allowed_methods() -> frozenset[str]:
    """Public ``torch.Tensor`` methods (what the SDK's own check allows), less the refused ones."""
    return frozenset(
        m
        for m in dir(torch.Tensor)
        if not m.startswith("_") and m not in _REFUSED_METHODS and callable(getattr(torch.Tensor, m, None))
    )


def _refuse(name: str, why: str) -> tinker.BadRequestError:
    return errors.bad_request(f"custom loss {name!r}: {why}", path="create_custom_loss")


def _resolve(loss: str, target: str) -> Any:
    """The allowed callable ``target`` names (``torch.exp``, ``operator.mul``, ``getattr``)."""
    if target == "getattr":
        return getattr
    parts = target.split(".")
    if parts[0] not in _MODULES:
        raise _refuse(loss, f"calls {target!r}; custom losses may only call torch, math and operator")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                found = getattr(found, attr)
        except AttributeError:
            break
        if found in _allowed_functions():
            return found
        break
    raise _refuse(loss, f"calls {target!r}, which is not an allowed operation")


class _Env:
    """Decodes a node's encoded arguments (``CustomLossNode.args``) against the values so far."""

    def __init__(self, loss: str) -> None:
        self.loss = loss
        self.values: dict[str, Any] = {}

    def decode(self, arg: Any) -> Any:
        if arg is None or isinstance(arg, (bool, int, float, str)):
            return arg
        if isinstance(arg, list):
            return [self.decode(a) for a in arg]
        if not (isinstance(arg, dict) and len(arg) == 1):
            raise _refuse(self.loss, f"has an argument the wire format does not define: {arg!r}")
        ((kind, value),) = arg.items()
        if kind == "ref":
            if value not in self.values:
                raise _refuse(self.loss, f"refers to {value!r} before it is defined")
            return self.values[value]
        if kind == "tuple" and isinstance(value, list):
            return tuple(self.decode(a) for a in value)
        if kind == "dict" and isinstance(value, dict):
            return {str(k): self.decode(v) for k, v in value.items()}
        if kind == "slice" and isinstance(value, list) and len(value) == 3:
            return slice(*(self.decode(a) for a in value))
        if kind == "ellipsis":
            return ...
        if kind == "float" and value in ("inf", "-inf", "nan"):
            return float(value)
        if kind == "device" and value == "cpu":
            return torch.device("cpu")
        if kind in _TORCH_CONSTANTS and isinstance(value, str):
            constant = getattr(torch, value, None)
            if isinstance(constant, _TORCH_CONSTANTS[kind]):
                return constant
        raise _refuse(self.loss, f"has an argument the simulator cannot rebuild: {arg!r}")


@dataclass(frozen=True)
class CustomLoss:
    """One uploaded loss, checked node by node; ``batch_loss`` runs it as the SDK's runner would."""

    loss_id: str
    session_id: str
    name: str
    inputs: tuple[types.CustomLossInput, ...]
    nodes: tuple[types.CustomLossNode, ...]
    functions: Mapping[str, Any]
    """The allowed callable of each ``call_function`` node, by node name."""

    @classmethod
    def build(
        cls,
        loss_id: str,
        session_id: str,
        name: str,
        inputs: Sequence[types.CustomLossInput],
        graph: types.CustomLossGraph,
    ) -> CustomLoss:
        """Check the graph against the allow-list (a ``BadRequestError`` names the first problem)."""
        if not inputs or inputs[0].name != "logprobs":
            raise _refuse(name, "its inputs must start with logprobs")
        if inputs[0].rank != 1:
            raise _refuse(
                name,
                "logprobs of rank 2 ([T, K]) are not simulated: the model scores one target per position",
            )
        placeholders = [n.target for n in graph.nodes if n.op == "placeholder"]
        if placeholders != [i.name for i in inputs]:
            raise _refuse(
                name, f"the graph takes {placeholders}, its declared inputs are {[i.name for i in inputs]}"
            )
        if (
            not graph.nodes
            or graph.nodes[-1].op != "output"
            or [n.op for n in graph.nodes].count("output") != 1
        ):
            raise _refuse(name, "the graph must end with its one output node")
        seen: set[str] = set()
        functions: dict[str, Any] = {}
        for node in graph.nodes:
            if node.name in seen:
                raise _refuse(name, f"defines {node.name!r} twice")
            seen.add(node.name)
            if node.op == "call_function":
                functions[node.name] = _resolve(name, node.target)
            elif node.op == "call_method" and node.target not in _allowed_methods():
                raise _refuse(name, f"calls method {node.target!r}, which is not an allowed tensor method")
            elif node.op in ("get_attr", "call_module"):
                raise _refuse(name, f"has a {node.op} node; a custom loss reads only its inputs")
        loss = cls(loss_id, session_id, name, tuple(inputs), tuple(graph.nodes), functions)
        loss._run_nodes([torch.zeros(1) for _ in inputs], dry=True)
        return loss

    def _run_nodes(
        self, values: Sequence[torch.Tensor], dry: bool = False
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Interpret the nodes on one datum's inputs; ``dry`` checks the output's form only."""
        env = _Env(self.name)
        placeholders = iter(values)
        for node in self.nodes:
            if node.op == "placeholder":
                env.values[node.name] = next(placeholders)
                continue
            args = [env.decode(a) for a in node.args]
            kwargs = {k: env.decode(v) for k, v in node.kwargs.items()}
            if node.op == "output":
                return self._output(args[0] if len(args) == 1 else None)
            if dry:
                env.values[node.name] = torch.zeros(1)
                continue
            if node.op == "call_method":
                receiver, *rest = args
                if not isinstance(receiver, torch.Tensor):
                    raise _refuse(self.name, f"calls {node.target!r} on a {type(receiver).__name__}")
                env.values[node.name] = getattr(receiver, node.target)(*rest, **kwargs)
            elif node.target == "getattr":
                if not (len(args) == 2 and isinstance(args[1], str) and not args[1].startswith("_")):
                    raise _refuse(self.name, "reads a private or computed attribute")
                env.values[node.name] = getattr(args[0], args[1])
            else:
                env.values[node.name] = self.functions[node.name](*args, **kwargs)
        raise _refuse(self.name, "the graph has no output")  # unreachable after build's checks

    def _output(self, output: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], dict)):
            raise _refuse(self.name, "must return (loss, metrics)")
        loss, metrics = output
        if not isinstance(loss, torch.Tensor):
            raise _refuse(self.name, "must return its loss as a tensor")
        for key, value in metrics.items():
            if not _METRIC_KEY.fullmatch(key) or not isinstance(value, torch.Tensor):
                raise _refuse(self.name, f"metric {key!r} must be a tensor named custom/<name>:sum or :mean")
        return loss, metrics

    def check_inputs(self, data: Sequence[types.Datum]) -> None:
        """Every datum has each input the loss reads, at its declared rank (``logprobs``: ``target_tokens``')."""
        logprobs, *rest = self.inputs
        for i, datum in enumerate(data):
            for loss_input, key in [(logprobs, "target_tokens"), *((x, x.name) for x in rest)]:
                if key not in datum.loss_fn_inputs:
                    raise errors.bad_request(
                        f"datum[{i}] has no loss_fn_inputs[{key!r}], which loss {self.name!r} takes"
                    )
                shape = datum.loss_fn_inputs[key].shape
                rank = 1 if shape is None else len(shape)
                if rank != loss_input.rank:
                    raise errors.bad_request(
                        f"datum[{i}] loss_fn_inputs[{key!r}] has rank {rank}, but loss {self.name!r} "
                        f"declared {loss_input.name} with rank {loss_input.rank}"
                    )

    def batch_loss(
        self, data: Sequence[types.Datum], logprobs: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The summed loss over datums and the metrics reduced by suffix (``data`` passed ``check_inputs``)."""
        total: torch.Tensor | None = None
        sums: dict[str, float] = {}
        for datum, lp in zip(data, logprobs, strict=True):
            inputs = [datum.loss_fn_inputs[i.name].to_torch() for i in self.inputs[1:]]
            try:
                loss, metrics = self._run_nodes([lp, *inputs])
                if loss.ndim != 0:
                    raise ValueError(f"it must return a scalar loss, got shape {tuple(loss.shape)}")
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach().item())
            except tinker.BadRequestError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise errors.bad_request(
                    f"custom loss {self.name!r} failed: {exc}", path="forward_backward"
                ) from exc
            total = loss if total is None else total + loss
        assert total is not None  # data is never empty (parsed first)
        return total, {k: v / len(data) if k.endswith(":mean") else v for k, v in sums.items()}


class CustomLosses:
    """The service's uploaded losses, by id; each belongs to the session that created it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._losses: dict[str, CustomLoss] = {}

    def create(
        self,
        session_id: str,
        seq_id: int,
        name: str,
        inputs: Sequence[types.CustomLossInput],
        graph: types.CustomLossGraph,
    ) -> str:
        """Check and store the loss; returns its id (``<session>:loss:<seq_id>``)."""
        loss = CustomLoss.build(f"{session_id}:loss:{seq_id}", session_id, name, inputs, graph)
        with self._lock:
            self._losses[loss.loss_id] = loss
        return loss.loss_id

    def get(self, session_id: str, config: Mapping[str, float | str] | None) -> CustomLoss:
        """The loss ``loss_fn_config["loss_id"]`` names, if ``session_id`` created it."""
        if set(config or {}) != {"loss_id"}:
            raise errors.bad_request(
                f"loss_fn 'custom' takes loss_fn_config {{'loss_id': ...}} only, got {sorted(config or {})}",
                path="forward_backward",
            )
        loss_id = str((config or {})["loss_id"])
        with self._lock:
            loss = self._losses.get(loss_id)
        if loss is None or loss.session_id != session_id:
            raise errors.bad_request(f"no custom loss {loss_id!r} in this session", path="forward_backward")
        return loss

    def release(self, session_id: str) -> None:
        """Forget the session's losses (it ended)."""
        with self._lock:
            for loss_id in [k for k, v in self._losses.items() if v.session_id == session_id]:
                del self._losses[loss_id]
