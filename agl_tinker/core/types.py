"""The core's vocabulary: what reconstruction reads out of a rollout's spans, and its options.

:func:`agl_tinker.core.reconstruct.reconstruct` produces these; alignment, reward attribution and
the training loop consume them. All are dataclasses built with their own constructors.

The options are frozen. The results built for every call or rollout (calls, reward events,
reconstructions, and the steps, alignments, attributions and rollout trajectories built from
them) are slots dataclasses, read-only by convention, like the cookbook's own ``Transition`` and
``Trajectory``. A frozen dataclass sets each field through ``object.__setattr__``: for these
results that was 15% of the core's instructions at one call per rollout and 12% at 16
(``benchmarks/reconstruct.py``'s rollouts, counted with callgrind).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agl_tinker import spans as S

__all__ = [
    "CallProblem",
    "LLMCall",
    "ReconstructOptions",
    "Reconstruction",
    "RewardEvent",
    "RewardProblem",
    "flat_messages",
]


class CallProblem(StrEnum):
    """Why a call cannot be trained; its tokens may still serve as context for later calls."""

    MISSING_PROMPT_TOKEN_IDS = "missing_prompt_token_ids"
    MISSING_RESPONSE_TOKEN_IDS = "missing_response_token_ids"
    MALFORMED_TOKEN_IDS = "malformed_token_ids"
    """Token ids that are not a list of ints."""
    TOKEN_ID_OUT_OF_RANGE = "token_id_out_of_range"
    """A token id outside ``[0, vocab_size)`` (``[0, 2**32)`` when the vocabulary size is unknown)."""
    EMPTY_PROMPT = "empty_prompt"
    MISSING_LOGPROBS = "missing_logprobs"
    LOGPROB_COUNT_MISMATCH = "logprob_count_mismatch"
    BAD_LOGPROBS = "bad_logprobs"
    """A logprob that is not a number, not finite, or above 0 (beyond float noise)."""
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    """The tokens differ from those our endpoint hashed into ``agl_tinker.sequence_fingerprint``."""
    CONFLICTING_SPANS = "conflicting_spans"
    """Spans sharing one response id record different token ids: two calls were given one id, or
    a record was changed; which tokens were sampled cannot be told."""
    FAILED = "failed"


class RewardProblem(StrEnum):
    """Why a reward span cannot be trained on; any one excludes its rollout (``bad_reward``)."""

    MISSING_VALUE = "missing_value"
    NOT_A_NUMBER = "not_a_number"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    """Larger in magnitude than ``ReconstructOptions.max_abs_reward``."""


@dataclass(slots=True)
class LLMCall:
    """One chat completion as recorded; ``problem`` is ``None`` when it can be trained.

    Read-only by convention (see the module docstring for why it is not frozen).
    """

    index: int
    """Position in the rollout's call order (start time, then sequence id, then span id)."""
    span_id: str
    """The span the call's tokens came from."""
    span_ids: tuple[str, ...]
    """Every span merged into this call (client-side, proxy and raw spans of one response)."""
    response_id: str | None
    prompt_token_ids: Sequence[int] | None
    response_token_ids: Sequence[int] | None
    logprobs: Sequence[float] | None
    finish_reason: str | None
    start_time: float | None
    end_time: float | None
    sequence_id: int
    model: str | None
    agent_name: str | None
    weights_version: int | str | None
    source: str
    """``agl_tinker`` (our endpoint), ``llm_proxy``, ``llm_proxy_raw``, ``client`` or ``other``."""
    problem: CallProblem | None
    attributes: Mapping[str, Any] = field(repr=False, compare=False)
    """Attributes of the span in ``span_id``: messages are decoded from them only on demand."""
    prefix_call: int | None = field(default=None, compare=False)
    """Index of the earlier call whose prompt + response this call's prompt was found to start
    with, token for token, when it was validated (``None``: none was, or it was not validated)."""
    sampled_sequence_id: str | None = None
    """The service's ``sequence_id`` of the call's sample, when its sampling client recorded
    stability info (``agl_tinker.sampled_sequence_id``); what datum provenance names."""

    @property
    def trainable(self) -> bool:
        return self.problem is None

    @property
    def messages(self) -> list[dict[str, Any]] | None:
        """Input messages, when the span recorded them (decoded lazily: they grow with history)."""
        raw = self.attributes.get(S.AGL_MESSAGES)
        if isinstance(raw, str):
            return list(json.loads(raw))
        return flat_messages(self.attributes, S.PROMPT_PREFIX)

    @property
    def completion(self) -> dict[str, Any] | None:
        raw = self.attributes.get(S.AGL_COMPLETION)
        if isinstance(raw, str):
            return dict(json.loads(raw))
        flat = flat_messages(self.attributes, S.COMPLETION_PREFIX)
        return flat[0] if flat else None


def flat_messages(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]] | None:
    """Messages written as flat ``<prefix>.<i>.<key>`` attributes (OpenTelemetry GenAI style).

    Args:
        attrs: a span's attributes.
        prefix: ``gen_ai.prompt`` or ``gen_ai.completion``.

    Returns:
        The messages in order, or ``None`` when there are none.
    """
    out: list[dict[str, Any]] = []
    i = 0
    while f"{prefix}.{i}.role" in attrs or f"{prefix}.{i}.content" in attrs:
        message: dict[str, Any] = {}
        for key in ("role", "content", "name", "tool_call_id", "finish_reason"):
            value = attrs.get(f"{prefix}.{i}.{key}")
            if value is not None:
                message[key] = value
        out.append(message)
        i += 1
    return out or None


@dataclass(slots=True)
class RewardEvent:
    """One ``agl.emit_reward`` value, placed in time relative to the rollout's LLM calls."""

    value: float
    """Primary reward (the first dimension)."""
    time: float | None
    sequence_id: int
    span_id: str
    after_call: int | None
    """Index of the last LLM call that ended before the reward; ``None``: before every call."""
    dimensions: Mapping[str, float] = field(default_factory=dict)
    problem: RewardProblem | None = None
    """Set when the span's reward is unusable; ``value`` is then NaN and never trained on."""


@dataclass(frozen=True)
class ReconstructOptions:
    attempt: str = "latest"
    """``"latest"`` (the attempt with the newest spans), ``"all"``, or one attempt id."""
    agent_match: str | None = None
    """Regex on the agent name; when set, calls from other or unnamed agents are filtered out."""
    model_match: str | None = None
    """Regex on the request (or response) model; when set, calls of other models are filtered out."""
    llm_span_names: frozenset[str] = S.LLM_CALL_SPAN_NAMES
    """Span names that are LLM calls; any span carrying ``prompt_token_ids`` is one too."""
    vocab_size: int | None = None
    """Token ids must be below this (the tokenizer's ``len``); ``None``: below 2**32 only."""
    logprob_tolerance: float = 1e-4
    """Logprobs above 0 by at most this much are float noise; larger ones make the call a problem."""
    max_abs_reward: float = 1e6
    """Rewards of larger magnitude (or not finite, or not numbers) exclude their rollout: beyond
    this, a group's advantages lose every other rollout's signal or overflow."""

    def __post_init__(self) -> None:
        if self.vocab_size is not None and not 0 < self.vocab_size <= 2**32:
            raise ValueError(f"vocab_size must be in (0, 2**32], got {self.vocab_size}")
        if not (self.logprob_tolerance >= 0 and self.max_abs_reward > 0):
            raise ValueError("logprob_tolerance must be >= 0 and max_abs_reward > 0")


@dataclass(slots=True)
class Reconstruction:
    rollout_id: str | None
    attempt_id: str | None
    calls: tuple[LLMCall, ...]
    rewards: tuple[RewardEvent, ...]
    """In emission order (start time, then sequence id)."""
    metrics: Mapping[str, int]
    """spans, duplicate_spans, other_attempt_spans, merged_spans, filtered_calls, calls,
    tool_call_parse_failures (the endpoint's count of tool calls it could not parse), rewards, and
    ``problem/<reason>`` / ``reward_problem/<reason>`` counts."""
    filtered_ends: frozenset[int] = frozenset()
    """Prompt + response lengths of the calls ``agent_match``/``model_match`` left out: a kept call
    continuing one of them has lost nothing (see :class:`agl_tinker.core.align.Gap`)."""

    @property
    def problems(self) -> tuple[LLMCall, ...]:
        return tuple(c for c in self.calls if c.problem is not None)
