"""Stability info: sampled sequences recorded per session, named from training requests.

A sampling client created with ``record_stability_info=True`` records every sequence it samples
under the ``SampledSequence.sequence_id`` it returns: the prompt, the sampled tokens, the sampler's
logprobs and the weights version that produced them. A training request names recorded sequences
through its datums' provenance (``Datum.with_provenance``); as documented, a record belongs to the
session that sampled it and can be trained on for one day (``SimConfig.stability_ttl_s``) after
sampling, each training request that uses it restarting that day. Naming a sequence that is
unknown, expired or of another session is a ``tinker.BadRequestError`` (a user error over the wire).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from tinker import types

from . import errors

MAX_RECORDS = 200_000
"""Records one service keeps at most; past that the least recently used one expires early."""


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One recorded sequence."""

    session_id: str
    prompt: np.ndarray  # int64 [P]
    tokens: np.ndarray  # int64 [T]
    logprobs: np.ndarray  # float64 [T], the sampler's
    weights_version: int


def session_of(client_id: str) -> str:
    """The session part of a service id (``<session>:train:<n>`` or ``<session>:sample:<n>``)."""
    for marker in (":train:", ":sample:"):
        if marker in client_id:
            return client_id.rsplit(marker, 1)[0]
    return client_id


class StabilityLedger:
    """The recorded sequences of one simulated service (thread-safe)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: collections.OrderedDict[str, tuple[Recorded, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def record(self, sequence_id: str, record: Recorded) -> None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._records[sequence_id] = (record, now)
            self._records.move_to_end(sequence_id)
            while len(self._records) > MAX_RECORDS:
                self._records.popitem(last=False)

    def peek(self, sequence_id: str) -> Recorded | None:
        """The record, without using it (tests, diagnostics)."""
        with self._lock:
            found = self._records.get(sequence_id)
        return None if found is None else found[0]

    def use(self, sequence_id: str, session_id: str) -> Recorded:
        """The record a training request names; restarts its day. Raises for unknown/expired ids."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            found = self._records.get(sequence_id)
            if found is None or found[0].session_id != session_id:
                where = "" if found is None else " in this session (it was sampled in another one)"
                raise errors.bad_request(
                    f"sequence_id {sequence_id!r} is unknown or expired{where}: recorded sequences "
                    "(record_stability_info=True) can be trained on in the session that sampled "
                    "them, for one day after their last use",
                    path="forward_backward",
                )
            self._records[sequence_id] = (found[0], now)
            self._records.move_to_end(sequence_id)
            return found[0]

    def _expire(self, now: float) -> None:
        while self._records:
            _, (_, used) = next(iter(self._records.items()))
            if now - used <= self._ttl_s:
                return
            self._records.popitem(last=False)


Spans = list[types.PromptProvenanceSpan | types.SampledProvenanceSpan]


def _run_source(
    record: Recorded, span: types.PromptProvenanceSpan | types.SampledProvenanceSpan
) -> np.ndarray:
    source = record.tokens if isinstance(span, types.SampledProvenanceSpan) else record.prompt
    if span.offset + span.length > len(source):
        kind = "sampled tokens" if isinstance(span, types.SampledProvenanceSpan) else "prompt"
        raise errors.bad_request(
            f"provenance run [{span.offset}, {span.offset + span.length}) of {span.sequence_id!r} is "
            f"past the end of its {kind} ({len(source)} tokens)",
            path="forward_backward",
        )
    return source[span.offset : span.offset + span.length]


def _walk(
    ledger: StabilityLedger, session_id: str, spans: Spans, tokens: np.ndarray, field: str
) -> list[tuple[types.PromptProvenanceSpan | types.SampledProvenanceSpan, Recorded, int]]:
    """Check that ``spans`` tile ``tokens`` and claim them truly; ``(span, record, start)`` per run."""
    if sum(span.length for span in spans) != len(tokens):
        raise errors.bad_request(f"{field} runs do not tile the field's {len(tokens)} positions")
    runs = []
    start = 0
    for span in spans:
        record = ledger.use(span.sequence_id, session_id)
        claimed = _run_source(record, span)
        if not np.array_equal(claimed, tokens[start : start + span.length]):
            raise errors.bad_request(
                f"{field}: positions [{start}, {start + span.length}) are not the tokens the run "
                f"claims from {span.sequence_id!r}",
                path="forward_backward",
            )
        runs.append((span, record, start))
        start += span.length
    return runs


def recorded_logprobs(
    ledger: StabilityLedger,
    session_id: str,
    model_input_spans: Spans | None,
    loss_fn_input_spans: Spans | None,
    inputs: np.ndarray,
    targets: np.ndarray,
) -> torch.Tensor:
    """The sampler's recorded logprob of each target token (NaN outside sampled runs).

    Every run of both span lists must name a recorded sequence of ``session_id`` and hold exactly
    the tokens it claims (model input runs against ``inputs``, loss runs against ``targets``).
    """
    if model_input_spans is None or loss_fn_input_spans is None:
        raise errors.bad_request(
            "this loss needs datums with provenance (Datum.with_provenance naming the sampled sequences)",
            path="forward_backward",
        )
    _walk(ledger, session_id, model_input_spans, inputs, "model_input_spans")
    out = torch.full((len(targets),), float("nan"), dtype=torch.float64)
    for span, record, start in _walk(ledger, session_id, loss_fn_input_spans, targets, "loss_fn_input_spans"):
        if isinstance(span, types.SampledProvenanceSpan):
            values = record.logprobs[span.offset : span.offset + span.length]
            out[start : start + span.length] = torch.from_numpy(np.asarray(values, dtype=np.float64))
    return out
