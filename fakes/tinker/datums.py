"""Turning SDK ``Datum`` objects into arrays, with the service's validation.

One context rule serves ``sample`` and ``forward_backward`` alike: a sequence the model reads or writes
must fit the base model's context. ``forward_backward`` (:func:`check_context`) needs ``model_input`` plus
the one token it predicts after it to fit; ``sample`` (:func:`check_sample_budget`) needs the prompt plus
``max_tokens`` to fit, refused with the service's own message ("Prompt length plus max_tokens exceeds the
model's context window: P prompt tokens + M max_tokens > C.", as observed from the live service), and
without ``max_tokens`` it stops at the context. So a datum built from any sequence ``sample`` returns
(``model_input`` = that sequence minus its last token) is accepted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tinker import types

from . import errors


@dataclasses.dataclass(frozen=True)
class ParsedDatum:
    inputs: np.ndarray  # int64 [N]
    targets: np.ndarray  # int64 [N]
    tensors: dict[str, torch.Tensor]  # float64 [N] loss inputs other than target_tokens
    model_input_spans: list[types.PromptProvenanceSpan | types.SampledProvenanceSpan] | None = None
    loss_fn_input_spans: list[types.PromptProvenanceSpan | types.SampledProvenanceSpan] | None = None


def check_context(n_tokens: int, context: int, what: str, path: str) -> None:
    """Refuse ``n_tokens`` read tokens when they and the token predicted after them exceed ``context``."""
    if n_tokens + 1 > context:
        raise errors.bad_request(
            f"{what} has {n_tokens} tokens; with the token it predicts that exceeds the model's "
            f"context of {context}",
            path=path,
        )


def tokens_of(model_input: types.ModelInput, vocab_size: int, what: str = "model_input") -> np.ndarray:
    try:
        ids = np.asarray(model_input.to_ints(), dtype=np.int64)
    except ValueError as exc:
        raise errors.bad_request(f"{what}: the simulator only takes text tokens ({exc})") from None
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise errors.bad_request(f"{what}: token ids must be in [0, {vocab_size})")
    return ids


def check_sample_budget(prompt_tokens: int, max_tokens: int | None, context: int) -> None:
    """Refuse a sample whose prompt plus ``max_tokens`` (or plus one token, when unset) exceeds ``context``."""
    if max_tokens is not None and prompt_tokens + max_tokens > context:
        raise errors.bad_request(
            "Prompt length plus max_tokens exceeds the model's context window: "
            f"{prompt_tokens} prompt tokens + {max_tokens} max_tokens > {context}.",
            path="asample",
        )
    check_context(prompt_tokens, context, "prompt", "asample")


def parse(datum: types.Datum, vocab_size: int, context: int) -> ParsedDatum:
    inputs = tokens_of(datum.model_input, vocab_size)
    n = len(inputs)
    if n == 0:
        raise errors.bad_request("a datum needs at least one input token", path="forward_backward")
    check_context(n, context, "model_input", "forward_backward")
    raw = datum.loss_fn_inputs
    if "target_tokens" not in raw:
        raise errors.bad_request("loss_fn_inputs needs target_tokens", path="forward_backward")
    targets = np.asarray(raw["target_tokens"].to_numpy(), dtype=np.int64)
    if targets.shape != (n,):
        raise errors.bad_request(
            f"target_tokens has shape {list(targets.shape)}, the simulator needs [{n}] (one per input token)",
            path="forward_backward",
        )
    if targets.min() < 0 or targets.max() >= vocab_size:
        raise errors.bad_request(f"target_tokens must be in [0, {vocab_size})", path="forward_backward")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key == "target_tokens":
            continue
        array = np.asarray(value.to_numpy(), dtype=np.float64)
        if array.shape != (n,):
            raise errors.bad_request(
                f"{key} has shape {list(array.shape)}, expected [{n}]", path="forward_backward"
            )
        tensors[key] = torch.from_numpy(array)
    return ParsedDatum(inputs, targets, tensors, datum.model_input_spans, datum.loss_fn_input_spans)
