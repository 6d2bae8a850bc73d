"""Span reconstruction: the spans of one rollout -> its ordered LLM calls and reward events.

Contract: pure and O(n log n) in the number of spans. Every span is read once by the reader of its
writer's format (:mod:`agl_tinker.core.readers`); the spans of one call are merged
(:mod:`agl_tinker.core.merge`); calls are ordered by start time with a deterministic tie-break and
validated token by token (:mod:`agl_tinker.core.validate`); calls that cannot be trained are kept
with a reason instead of being dropped. Reward events are placed after the last call that had
ended when they were emitted.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from agl_tinker import spans as S
from agl_tinker.core.merge import merge_calls
from agl_tinker.core.readers import CallDraft, ReadReward, read_call_span, read_reward_span
from agl_tinker.core.types import (
    LLMCall,
    Reconstruction,
    ReconstructOptions,
    RewardEvent,
)
from agl_tinker.core.validate import validate_calls

if TYPE_CHECKING:
    from agentlightning.types import Span

__all__ = [
    "dedupe_spans",
    "reconstruct",
]

_INF = float("inf")


def dedupe_spans(spans: Iterable[Span]) -> tuple[list[Span], int]:
    """The one rule for duplicate spans: one copy per span id, the richest (most attributes) kept.

    A retried span write can land twice and a re-export may carry more attributes; of copies with
    as many attributes, the first wins. Order is that of each id's first appearance.

    Args:
        spans: spans of one rollout, in any order.

    Returns:
        The unique spans and how many copies were dropped.
    """
    spans = spans if isinstance(spans, list) else list(spans)
    by_id: dict[str, Span] = {}
    for span in spans:
        prev = by_id.get(span.span_id)
        if prev is None or len(span.attributes) > len(prev.attributes):
            by_id[span.span_id] = span
    return list(by_id.values()), len(spans) - len(by_id)


def _agent_of(span_id: str | None, by_id: Mapping[str, Span], memo: dict[str, str | None]) -> str | None:
    """Nearest enclosing agent span's name (the rules of Agent-lightning's ``TraceTree.agent_name``
    that name agents rather than chains), memoised so each span is visited once."""
    path: list[str] = []
    found: str | None = None
    while span_id is not None and span_id not in memo:
        span = by_id.get(span_id)
        if span is None:
            break
        path.append(span_id)
        a = span.attributes
        name = a.get("agent.name") or a.get(S.AGL_AGENT_NAME)
        if name is None and a.get("agentops.span.kind") == "agent":
            name = a.get("operation.name")
        if name is None:
            name = a.get("recipient_agent_type") or a.get("executor.id")
        if isinstance(name, str):
            found = name
            break
        span_id = span.parent_id
    else:
        if span_id is not None:
            found = memo[span_id]
    for sid in path:
        memo[sid] = found
    return found


def _select_attempt(spans: list[Span], attempt: str) -> tuple[str | None, list[Span]]:
    """The chosen attempt's id and spans (``"latest"``: the attempt holding the newest span)."""
    if attempt == "all" or not spans:
        return (None, spans)
    if attempt != "latest":
        return (attempt, [s for s in spans if s.attempt_id == attempt])
    # Sequence ids grow per rollout across attempts, so the newest attempt holds the largest one.
    newest: dict[str, tuple[int, float]] = {}
    for s in spans:
        key = (s.sequence_id, s.start_time or 0.0)
        prev = newest.get(s.attempt_id)
        if prev is None or key > prev:
            newest[s.attempt_id] = key
    if len(newest) == 1:
        return (spans[0].attempt_id, spans)
    latest = max(newest, key=lambda a: (newest[a], a))
    return (latest, [s for s in spans if s.attempt_id == latest])


def _order(d: CallDraft) -> tuple[float, int, str]:
    """Call order: start time (missing last), then sequence id, then span id."""
    return (d.start_time if d.start_time is not None else _INF, d.sequence_id, d.span_id)


def _wanted(d: CallDraft, agent_re: re.Pattern[str] | None, model_re: re.Pattern[str] | None) -> bool:
    if agent_re is not None and (d.agent_name is None or agent_re.search(d.agent_name) is None):
        return False
    return model_re is None or (d.model is not None and model_re.search(d.model) is not None)


def _call_before(calls: Sequence[LLMCall], starts: Sequence[float], t: float | None, seq: int) -> int | None:
    """The last call that ended at or before ``t`` (by sequence id when times are missing).
    ``starts``: the calls' start times, missing ones as infinity (so sorted, like the calls)."""
    if not calls:
        return None
    if t is None:
        below = [c.index for c in calls if c.sequence_id < seq]
        return below[-1] if below else None
    i = bisect.bisect_right(starts, t) - 1
    # Concurrent calls may have started before the reward but still been running: skip back past
    # them (a handful at most), so the reward goes to a call that had finished.
    while i >= 0 and (calls[i].end_time is not None and calls[i].end_time > t):  # type: ignore[operator]
        i -= 1
    return i if i >= 0 else None


def _count(metrics: dict[str, int], key: str) -> None:
    metrics[key] = metrics.get(key, 0) + 1


_DEFAULT_OPTIONS = ReconstructOptions()


def reconstruct(spans: Iterable[Span], options: ReconstructOptions = _DEFAULT_OPTIONS) -> Reconstruction:
    """The ordered LLM calls and reward events of one rollout's spans.

    Args:
        spans: the spans of one rollout, in any order; duplicates are dropped by :func:`dedupe_spans`.
        options: attempt selection, call filters and validation bounds.

    Returns:
        The calls (untrainable ones with their ``problem``), the reward events and counters.

    Raises:
        ValueError: the spans belong to several rollouts.
    """
    all_spans = spans if isinstance(spans, list) else list(spans)
    rollout_id = all_spans[0].rollout_id if all_spans else None
    if any(s.rollout_id != rollout_id for s in all_spans):
        rollout_ids = sorted({s.rollout_id for s in all_spans})
        raise ValueError(f"spans of several rollouts given to reconstruct(): {rollout_ids}")
    attempt_id, chosen = _select_attempt(all_spans, options.attempt)
    unique, duplicates = dedupe_spans(chosen)

    drafts: list[CallDraft] = []
    read_rewards: list[tuple[Span, ReadReward]] = []
    for s in unique:
        if s.name in options.llm_span_names or S.PROMPT_TOKEN_IDS in s.attributes:
            drafts.append(read_call_span(s))
        elif (reward := read_reward_span(s, options.max_abs_reward)) is not None:
            read_rewards.append((s, reward))
    by_id = {s.span_id: s for s in unique}
    unnamed = {d.span_id for d in drafts if d.agent_name is None}
    drafts, merged = merge_calls(drafts, {s.span_id: s.parent_id for s in unique})
    memo: dict[str, str | None] = {}
    for d in drafts:  # a call's agent may be named on an enclosing span
        if d.agent_name is None and d.span_id in unnamed:
            d.agent_name = _agent_of(by_id[d.span_id].parent_id, by_id, memo)

    kept = drafts
    filtered_ends: frozenset[int] = frozenset()
    if options.agent_match is not None or options.model_match is not None:
        agent_re = re.compile(options.agent_match) if options.agent_match is not None else None
        model_re = re.compile(options.model_match) if options.model_match is not None else None
        kept = [d for d in drafts if _wanted(d, agent_re, model_re)]
        filtered_ends = frozenset(d.end for d in drafts if not _wanted(d, agent_re, model_re))
    kept.sort(key=_order)
    validate_calls(kept, options)

    metrics: dict[str, int] = {
        "spans": len(all_spans),
        "other_attempt_spans": len(all_spans) - len(chosen),
        "duplicate_spans": duplicates,
        "merged_spans": merged,
        "filtered_calls": len(drafts) - len(kept),
    }
    calls = tuple(d.to_call(i) for i, d in enumerate(kept))
    parse_failures = 0
    for call in calls:
        failures = call.attributes.get(S.AGL_TOOL_CALL_PARSE_FAILURES)
        if type(failures) is int and failures > 0:
            parse_failures += failures
        if call.problem is not None:
            _count(metrics, f"problem/{call.problem}")
    metrics["calls"] = len(calls)
    metrics["tool_call_parse_failures"] = parse_failures

    rewards: list[RewardEvent] = []
    timed: list[tuple[tuple[float, int, str], float | None, Span, ReadReward]] = []
    for s, reward in read_rewards:
        t = s.start_time if s.start_time is not None else s.end_time
        timed.append(((t if t is not None else _INF, s.sequence_id, s.span_id), t, s, reward))
    timed.sort(key=lambda item: item[0])
    starts = [c.start_time if c.start_time is not None else _INF for c in calls]
    for _, t, s, reward in timed:
        rewards.append(
            RewardEvent(
                value=reward.value,
                time=t,
                sequence_id=s.sequence_id,
                span_id=s.span_id,
                after_call=_call_before(calls, starts, t, s.sequence_id),
                dimensions=reward.dimensions,
                problem=reward.problem,
            )
        )
        if reward.problem is not None:
            _count(metrics, f"reward_problem/{reward.problem}")
    metrics["rewards"] = len(rewards)
    return Reconstruction(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        calls=calls,
        rewards=tuple(rewards),
        metrics=metrics,
        filtered_ends=filtered_ends,
    )
