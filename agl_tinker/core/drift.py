"""Drift reports: where a call's prompt stopped continuing the tokens sampled before it.

A report names the call, the call it was compared with, the first differing token position and a
window of tokens on each side (decoded when a tokenizer is given), and tells drift (the history
was re-rendered differently) from concurrency (the calls overlapped: a parallel branch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from agl_tinker.core.types import LLMCall

__all__ = ["Decode", "DriftEvent", "DriftKind", "drift_event", "first_difference"]

Decode = Callable[[list[int]], str]

logger = logging.getLogger(__name__)


class DriftKind(StrEnum):
    DRIFT = "drift"
    """The call started after the sequence's last call ended: its history was re-rendered."""
    CONCURRENT = "concurrent"
    """The call overlapped the sequence's last call: a parallel branch, not a rendering bug."""


@dataclass(frozen=True)
class DriftEvent:
    call_index: int
    """The call whose prompt does not continue the sequence."""
    expected_call_index: int
    """The earlier call it was compared with: the one whose tokens its prompt shares the longest
    prefix with (see :mod:`agl_tinker.core.align`)."""
    sequence_index: int
    token_index: int
    """First prompt position differing from that sequence (its length if the prompt is shorter)."""
    expected_tokens: tuple[int, ...]
    actual_tokens: tuple[int, ...]
    expected_text: str | None
    actual_text: str | None
    kind: DriftKind


def first_difference(prompt: Sequence[int], expected: list[int]) -> int:
    """First index where they differ, or the shorter length: the length of their shared prefix."""
    n = min(len(prompt), len(expected))
    block = 512
    for start in range(0, n, block):
        end = min(start + block, n)
        a, b = list(prompt[start:end]), expected[start:end]
        if a != b:
            return start + next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return n


def drift_event(
    call: LLMCall, last: LLMCall, sequence_index: int, *, decode: Decode | None, window: int
) -> DriftEvent:
    """The report of ``call`` not continuing the sequence whose last call is ``last``.

    Args:
        call: the call that starts a new sequence.
        last: the earlier call ``call`` follows (the longest shared prefix).
        sequence_index: that sequence's index.
        decode: the tokenizer's decode, for the report's text (``None``: no text).
        window: tokens shown on each side of the first difference.

    Returns:
        Where the prompt first differs, and whether the calls overlapped in time.
    """
    assert call.prompt_token_ids is not None
    assert last.prompt_token_ids is not None and last.response_token_ids is not None
    expected = list(last.prompt_token_ids) + list(last.response_token_ids)
    prompt = call.prompt_token_ids
    at = first_difference(prompt, expected)
    lo = max(0, at - window)
    exp_win = tuple(expected[lo : at + window])
    act_win = tuple(prompt[lo : at + window])
    concurrent = call.start_time is not None and last.end_time is not None and call.start_time < last.end_time
    return DriftEvent(
        call_index=call.index,
        expected_call_index=last.index,
        sequence_index=sequence_index,
        token_index=at,
        expected_tokens=exp_win,
        actual_tokens=act_win,
        expected_text=_text(decode, exp_win),
        actual_text=_text(decode, act_win),
        kind=DriftKind.CONCURRENT if concurrent else DriftKind.DRIFT,
    )


def _text(decode: Decode | None, tokens: tuple[int, ...]) -> str | None:
    """Decoded tokens for a report; a report never fails the rollout (``None`` if decoding does)."""
    if decode is None:
        return None
    try:
        return decode(list(tokens))
    except Exception:  # the caller's tokenizer, on ids the core has already checked
        logger.debug("drift report: decoding %d tokens failed", len(tokens), exc_info=True)
        return None
