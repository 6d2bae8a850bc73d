"""One training step's rollouts as transcript rows (pure): what a user reads to see what the agent did.

:func:`step_transcripts` takes what a step already has (its groups of finished rollouts, each
rebuilt by the core into a :class:`~agl_tinker.core.trajectory.RolloutTrajectory`) and returns one
JSON-ready row per rollout. Every row carries the rollout's summary (reward, advantage, exclusion,
drift count, agents, weights versions and staleness, tool-call health); the rows of a sample of
rollouts (:func:`pick_detailed`: every excluded and drifting one first, then the best, the worst
and the rest) also carry their calls: messages, token ids per call, which tokens are trained and
sampled logprobs, and the drift reports. The size of one row's tokens is capped
(:data:`MAX_TOKENS_PER_ROLLOUT`); the writer (:mod:`agl_tinker.viewer.writer`) caps the step.

Token ids are stored once per sequence: a call that extends its sequence stores only the prompt
tokens after the previous call's prompt + response (``prompt_from`` says where they start), so a
long conversation costs its length, not its length squared. Messages are stored the same way
(``messages_from``: how many input messages the agent's previous call already showed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from tinker_cookbook.rl.data_processing import compute_advantages

from agl_tinker.core.tool_health import PARSE_FAILURES_KEY, tool_calls_in, tools_offered
from agl_tinker.core.trajectory import RolloutTrajectory, trajectory_group
from agl_tinker.core.types import LLMCall

__all__ = [
    "MAX_TEXT_CHARS",
    "MAX_TOKENS_PER_ROLLOUT",
    "GroupLike",
    "OutcomeLike",
    "pick_detailed",
    "rollout_row",
    "step_transcripts",
]

MAX_TOKENS_PER_ROLLOUT = 32_768
"""Token ids (prompt deltas + responses) stored per rollout; later calls keep their messages only."""

MAX_TEXT_CHARS = 8_000
"""Longest message text (or task) stored; longer text is cut and marked ``…[cut N chars]``."""

TokenText = Callable[[int], str]
"""One token id -> its text (the tokenizer's decode of that one token)."""


class OutcomeLike(Protocol):
    """A finished rollout as the loop holds it (``agl_tinker.dispatch.types.RolloutOutcome``)."""

    @property
    def rollout_id(self) -> str: ...
    @property
    def slot(self) -> int: ...
    @property
    def final_status(self) -> str: ...
    @property
    def result(self) -> RolloutTrajectory: ...


class GroupLike(Protocol):
    """The rollouts of one task (``agl_tinker.dispatch.types.GroupResult``)."""

    @property
    def group_index(self) -> int: ...
    @property
    def task(self) -> Mapping[str, Any]: ...
    @property
    def outcomes(self) -> Sequence[OutcomeLike]: ...


def step_transcripts(
    step: int,
    groups: Sequence[GroupLike],
    *,
    sample: int,
    min_valid: int = 1,
    token_text: TokenText | None = None,
    policy: str | None = None,
) -> list[dict[str, Any]]:
    """Transcript rows of one step: a summary row per rollout, with calls for the sampled ones.

    Args:
        step: the training step; calls' staleness is measured against it (weights version ``step``
            is the current policy).
        groups: the step's groups, in group order.
        sample: detailed rollouts besides the excluded and drifting ones (see :func:`pick_detailed`).
        min_valid: ``min_valid_per_group`` of the run (which groups were trained, hence advantages).
        token_text: text of one token, for the token view (``None``: ids only).
        policy: the policy these rollouts trained (several-policy runs), recorded in every row.

    Returns:
        One row per rollout, in group then slot order; a row with ``"calls"`` is detailed.
    """
    rows: list[dict[str, Any]] = []
    rollouts: list[RolloutTrajectory] = []
    for group in groups:
        results = [o.result for o in group.outcomes]
        group_rows = []
        for o, advantage in zip(group.outcomes, _advantages(results, min_valid), strict=True):
            row = rollout_row(step, o.result, advantage=advantage, status=str(o.final_status))
            row.update(group=group.group_index, slot=o.slot, rollout_id=o.rollout_id, task=_task(group.task))
            if policy is not None:
                row["policy"] = policy
            group_rows.append(row)
        staleness = max((r["staleness"] for r in group_rows), default=0)
        for row in group_rows:
            row["group_staleness"] = staleness  # the group is as stale as its oldest call
        rows += group_rows
        rollouts += results
    for i in pick_detailed(rows, sample):
        rows[i].update(rollout_detail(rollouts[i], token_text))
    return rows


def _advantages(results: Sequence[RolloutTrajectory], min_valid: int) -> list[float | None]:
    """Each rollout's advantage as the cookbook computes it; ``None`` when it is not trained."""
    group, report = trajectory_group(list(results), min_valid=min_valid)
    out: list[float | None] = [None] * len(results)
    if group is None:
        return out
    (advantages,) = compute_advantages([group])
    for i, value in zip(report.selection.kept, advantages.tolist(), strict=True):
        out[i] = float(value)
    return out


def _task(task: Mapping[str, Any]) -> Any:
    text = json.dumps(task, default=str)
    return task if len(text) <= MAX_TEXT_CHARS else _cut(text)


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return f"{text[:MAX_TEXT_CHARS]}…[cut {len(text) - MAX_TEXT_CHARS} chars]"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def rollout_row(
    step: int, rollout: RolloutTrajectory, *, advantage: float | None, status: str | None = None
) -> dict[str, Any]:
    """The summary of one rollout (what the viewer's lists and filters read)."""
    calls = rollout.reconstruction.calls
    versions = [_version(c) for c in calls]
    known = [v for v in versions if v is not None]
    attribution = rollout.attribution
    scored = attribution.exclusion is None or attribution.scored
    return {
        "step": step,
        "status": status,
        "exclusion": str(attribution.exclusion) if attribution.exclusion is not None else None,
        "reward": _finite(attribution.episode_return) if scored else None,
        "advantage": advantage,
        "trained": advantage is not None,
        "calls_total": len(calls),
        "calls_trained": len(rollout.alignment.steps),
        "sequences": len(rollout.alignment.sequences),
        "drift": len(rollout.alignment.drift),
        "gaps": len(rollout.alignment.gaps),
        "problems": sorted({str(c.problem) for c in calls if c.problem is not None}),
        "agents": sorted({c.agent_name for c in calls if c.agent_name is not None}),
        "models": sorted({c.model for c in calls if c.model is not None}),
        "weights_versions": sorted(set(known)),
        "staleness": max((step - v for v in known), default=0),
        "tools": _tool_health(calls),
    }


def _version(call: LLMCall) -> int | None:
    try:
        return int(call.weights_version) if call.weights_version is not None else None
    except ValueError:
        return None


def _tool_health(calls: Sequence[LLMCall]) -> dict[str, int]:
    failures = 0
    for c in calls:
        value = c.attributes.get(PARSE_FAILURES_KEY)
        if isinstance(value, int):
            failures += value
    return {
        "calls": sum(tool_calls_in(c) for c in calls),
        "offered": sum(1 for c in calls if tools_offered(c)),
        "parse_failures": failures,
    }


def pick_detailed(rows: Sequence[Mapping[str, Any]], sample: int) -> list[int]:
    """Which rows get their calls, most telling first.

    Every excluded or drifting rollout (up to ``sample`` of them), then up to ``sample`` others:
    the best and the worst by reward in turn, then the rest in order. So at most ``2 * sample``.
    """
    if sample <= 0:
        return []
    flagged = [i for i, r in enumerate(rows) if r["exclusion"] is not None or r["drift"] or r["gaps"]]
    chosen = flagged[:sample]
    rest = [i for i in range(len(rows)) if i not in set(chosen)]
    scored = sorted((i for i in rest if rows[i]["reward"] is not None), key=lambda i: rows[i]["reward"])
    order: list[int] = []
    lo, hi = 0, len(scored) - 1
    while lo <= hi:
        order.append(scored[hi])
        if lo != hi:
            order.append(scored[lo])
        lo, hi = lo + 1, hi - 1
    order += [i for i in rest if i not in set(order)]
    return chosen + order[:sample]


def rollout_detail(rollout: RolloutTrajectory, token_text: TokenText | None) -> dict[str, Any]:
    """The calls, sequences, drift reports and reward events of one rollout (see the module docstring)."""
    calls = rollout.reconstruction.calls
    alignment = rollout.alignment
    sequence_of: dict[int, int] = {}
    prompt_from: dict[int, int] = {}
    for seq in alignment.sequences:
        end = 0
        for ci in seq.call_indices:
            sequence_of[ci] = seq.index
            prompt_from[ci] = end
            call = calls[ci]
            end = len(call.prompt_token_ids or ()) + len(call.response_token_ids or ())
    trained = set(alignment.step_calls)
    rewards = dict(zip(alignment.step_calls, rollout.attribution.step_rewards, strict=True))
    budget = MAX_TOKENS_PER_ROLLOUT
    out_calls: list[dict[str, Any]] = []
    seen: set[int] = set()
    last_messages: dict[str | None, tuple[list[dict[str, Any]], bool]] = {}
    for call in calls:
        entry: dict[str, Any] = {
            "index": call.index,
            "agent": call.agent_name,
            "model": call.model,
            "weights_version": call.weights_version,
            "finish_reason": call.finish_reason,
            "problem": str(call.problem) if call.problem is not None else None,
            "sequence": sequence_of.get(call.index),
            "trained": call.index in trained,
            "reward": rewards.get(call.index),
        }
        entry.update(_messages(call, last_messages))
        start = prompt_from.get(call.index, 0)
        prompt = list(call.prompt_token_ids or ())[start:]
        response = list(call.response_token_ids or ())
        if len(prompt) + len(response) <= budget:
            budget -= len(prompt) + len(response)
            logprobs = (
                call.logprobs if call.logprobs is not None and len(call.logprobs) == len(response) else None
            )
            entry.update(
                prompt_from=start,
                prompt=prompt,
                response=response,
                logprobs=[round(float(x), 4) for x in logprobs] if logprobs is not None else None,
            )
            seen.update(prompt)
            seen.update(response)
        else:
            entry["tokens_cut"] = True
        out_calls.append(entry)
    detail: dict[str, Any] = {
        "calls": out_calls,
        "drift_reports": [
            {
                "call": d.call_index,
                "expected_call": d.expected_call_index,
                "sequence": d.sequence_index,
                "token_index": d.token_index,
                "expected_text": d.expected_text,
                "actual_text": d.actual_text,
                "kind": str(d.kind),
            }
            for d in alignment.drift
        ],
        "gap_reports": [
            {"call": g.call_index, "claimed_prefix": g.claimed_prefix_length} for g in alignment.gaps
        ],
        "reward_events": [
            {"value": _finite(e.value), "after_call": e.after_call, "problem": e.problem}
            for e in rollout.reconstruction.rewards
        ],
        "skipped_calls": [[i, str(why)] for i, why in alignment.skipped],
    }
    if token_text is not None:
        detail["token_text"] = {str(t): token_text(t) for t in sorted(seen)}
    return detail


def _messages(call: LLMCall, last: dict[str | None, tuple[list[dict[str, Any]], bool]]) -> dict[str, Any]:
    """The call's input messages after those its agent's previous call showed, and its answer."""
    try:
        messages = call.messages or []
        completion = call.completion
    except (ValueError, TypeError):  # a writer's malformed JSON: the tokens still tell the story
        return {"messages_from": 0, "messages": [], "completion": None}
    previous, answered = last.get(call.agent_name, ([], False))
    start = 0
    if previous and messages[: len(previous)] == previous:
        start = len(previous)
        # the previous answer, as the agent sends it back, is already shown as that call's completion
        if answered and start < len(messages) and messages[start].get("role") == "assistant":
            start += 1
    last[call.agent_name] = (list(messages), completion is not None)
    return {
        "messages_from": start,
        "messages": [_short_message(m) for m in messages[start:]],
        "completion": _short_message(completion) if completion is not None else None,
    }


def _short_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(message)
    content = out.get("content")
    if isinstance(content, str):
        out["content"] = _cut(content)
    elif content is not None:
        out["content"] = _cut(json.dumps(content, default=str))
    return out
