"""A call while its spans are read, merged and validated: the typed draft of an :class:`LLMCall`.

Readers fill a draft from one span; merging fills one draft from the others of the same response;
validation may replace unusable token lists with ``None``. Only then is it frozen into an
``LLMCall``, so the call's fields are decided once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agl_tinker.core.readers.values import MALFORMED, Malformed
from agl_tinker.core.types import CallProblem, LLMCall

__all__ = ["SOURCE_RANK", "CallDraft", "merge_draft", "problem_of"]

SOURCE_RANK = {
    name: rank for rank, name in enumerate(("agl_tinker", "llm_proxy", "llm_proxy_raw", "client", "other"))
}
"""Merge priority of a source (0: our schema, the best)."""


@dataclass(slots=True)
class CallDraft:
    """The :class:`LLMCall` fields of one call being assembled; token values may be :data:`MALFORMED`."""

    span_id: str
    span_ids: tuple[str, ...]
    response_id: str | None
    prompt_token_ids: Sequence[int] | Malformed | None
    response_token_ids: Sequence[int] | Malformed | None
    logprobs: Sequence[float] | Malformed | None
    finish_reason: str | None
    start_time: float | None
    end_time: float | None
    sequence_id: int
    model: str | None
    agent_name: str | None
    weights_version: int | str | None
    source: str
    attributes: Mapping[str, Any]
    failed: bool
    """Every span merged into the draft ended with an error status."""
    problem: CallProblem | None = None
    prefix_call: int | None = None
    """Set by validation: see :attr:`LLMCall.prefix_call`."""
    sampled_sequence_id: str | None = None
    conflicting: bool = False
    """Spans merged into the draft recorded different token ids (see :func:`merge_draft`)."""

    @property
    def key(self) -> str:
        """What spans of one call share: the response id, else the span id."""
        return self.response_id or self.span_id

    @property
    def end(self) -> int:
        """Where the call's tokens end (-1 when it has none to continue from)."""
        prompt, response = self.prompt_token_ids, self.response_token_ids
        if isinstance(prompt, (list, tuple)) and isinstance(response, (list, tuple)):
            return len(prompt) + len(response)
        return -1

    def to_call(self, index: int) -> LLMCall:
        """The frozen call at position ``index``; a call with a problem keeps no malformed value."""
        return LLMCall(
            index=index,
            span_id=self.span_id,
            span_ids=self.span_ids,
            response_id=self.response_id,
            prompt_token_ids=None if self.prompt_token_ids is MALFORMED else self.prompt_token_ids,
            response_token_ids=None if self.response_token_ids is MALFORMED else self.response_token_ids,
            logprobs=None if self.logprobs is MALFORMED else self.logprobs,
            finish_reason=self.finish_reason,
            start_time=self.start_time,
            end_time=self.end_time,
            sequence_id=self.sequence_id,
            model=self.model,
            agent_name=self.agent_name,
            weights_version=self.weights_version,
            source=self.source,
            problem=self.problem,
            attributes=self.attributes,
            prefix_call=self.prefix_call,
            sampled_sequence_id=self.sampled_sequence_id,
        )


def problem_of(draft: CallDraft) -> CallProblem | None:
    """Why the draft's values cannot be trained, before token-level validation (``None``: they can).

    A failed span that still returned a response is trainable: the tokens were sampled.
    """
    prompt, response, logprobs = draft.prompt_token_ids, draft.response_token_ids, draft.logprobs
    if draft.conflicting:
        return CallProblem.CONFLICTING_SPANS
    if prompt is MALFORMED or response is MALFORMED:
        return CallProblem.MALFORMED_TOKEN_IDS
    if draft.failed and not response:
        return CallProblem.FAILED
    if prompt is None:
        return CallProblem.MISSING_PROMPT_TOKEN_IDS
    if response is None:
        return CallProblem.MISSING_RESPONSE_TOKEN_IDS
    if not prompt:
        return CallProblem.EMPTY_PROMPT
    if logprobs is None or logprobs is MALFORMED:
        return CallProblem.MISSING_LOGPROBS
    if len(logprobs) != len(response):
        return CallProblem.LOGPROB_COUNT_MISMATCH
    return None


def merge_draft(into: CallDraft, other: CallDraft) -> None:
    """Fill ``into`` (the higher-priority source) from ``other``, and recompute its problem.

    Missing values are taken from ``other``; times widen to cover both; the draft failed only if
    both did. Token ids both record and that differ make the draft :attr:`CallDraft.conflicting`:
    one response id then stands for two different calls (or a changed record), and neither
    version can be trusted.
    """
    into.span_ids += other.span_ids
    into.conflicting = (
        into.conflicting
        or other.conflicting
        or _differ(into.prompt_token_ids, other.prompt_token_ids)
        or _differ(into.response_token_ids, other.response_token_ids)
    )
    if into.prompt_token_ids is None:
        into.prompt_token_ids = other.prompt_token_ids
    if into.response_token_ids is None:
        into.response_token_ids = other.response_token_ids
    if into.logprobs is None:
        into.logprobs = other.logprobs
    into.response_id = into.response_id if into.response_id is not None else other.response_id
    into.model = into.model if into.model is not None else other.model
    into.weights_version = into.weights_version if into.weights_version is not None else other.weights_version
    into.agent_name = into.agent_name if into.agent_name is not None else other.agent_name
    if into.sampled_sequence_id is None:
        into.sampled_sequence_id = other.sampled_sequence_id
    into.finish_reason = into.finish_reason if into.finish_reason is not None else other.finish_reason
    start, end = other.start_time, other.end_time
    if start is not None and (into.start_time is None or start < into.start_time):
        into.start_time = start
    if end is not None and (into.end_time is None or end > into.end_time):
        into.end_time = end
    into.sequence_id = min(into.sequence_id, other.sequence_id)
    into.failed = into.failed and other.failed
    into.problem = problem_of(into)


def _differ(a: Sequence[int] | Malformed | None, b: Sequence[int] | Malformed | None) -> bool:
    """Both are token id lists, and not the same ones."""
    if a is None or b is None or a is MALFORMED or b is MALFORMED:
        return False
    assert not isinstance(a, Malformed) and not isinstance(b, Malformed)
    return len(a) != len(b) or list(a) != list(b)
