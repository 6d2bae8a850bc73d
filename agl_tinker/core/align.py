"""Message-to-token alignment: ordered LLM calls -> token sequences the cookbook turns into datums.

A sequence grows while each call's prompt starts with the sequence so far (the previous call's
prompt + sampled response): its new prompt tokens are masked observations, its response tokens are
trained actions with their own logprobs. When a prompt does not continue any open sequence (the
history was re-rendered differently: drift; or calls ran concurrently) the call starts a new
sequence and the event is reported with the first differing token, so nothing is ever trained on
tokens the model did not sample. The check costs O(new tokens) per call when the writer recorded
fingerprints (see :mod:`agl_tinker.spans`) and falls back to an exact comparison otherwise.

Output: one ``Trajectory`` per rollout whose transitions are grouped by sequence, so
``tinker_cookbook.rl.data_processing.trajectory_to_data`` merges each sequence into exactly one
datum and the rollout's return (hence its group advantage) stays one number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import tinker
from tinker_cookbook.completers import TokensWithLogprobs
from tinker_cookbook.rl.types import Trajectory, TrajectoryGroup, Transition

from agl_tinker.core._construct import construct, model_input
from agl_tinker.core.reconstruct import LLMCall, Reconstruction, ReconstructOptions, reconstruct
from agl_tinker.core.rewards import (
    ExclusionReason,
    GroupSelection,
    RewardAttribution,
    RewardOptions,
    attribute_rewards,
    select_group,
)
from agl_tinker.spans import AGL_PREFIX_FINGERPRINT, AGL_PREFIX_LENGTH, AGL_SEQUENCE_FINGERPRINT

Decode = Callable[[list[int]], str]

logger = logging.getLogger(__name__)

_new = object.__new__
_set = object.__setattr__


class DriftKind(StrEnum):
    DRIFT = "drift"
    """The call started after the sequence's last call ended: its history was re-rendered."""
    CONCURRENT = "concurrent"
    """The call overlapped the sequence's last call: a parallel branch, not a rendering bug."""


@dataclass(frozen=True)
class AlignOptions:
    window: int = 8
    """Tokens shown on each side of the first difference in a drift report."""
    max_candidates: int = 8
    """Open sequences (most recent first) a call may extend; bounds the cost of branchy rollouts."""
    on_gap: Literal["exclude", "train"] = "exclude"
    """A lost call (see :class:`Gap`): ``exclude`` the rollout (reason ``gap``), or ``train`` the
    calls that were recorded, the lost call's tokens staying masked context of later ones."""


@dataclass(frozen=True)
class DriftEvent:
    call_index: int
    """The call whose prompt does not continue the sequence."""
    expected_call_index: int
    """Last call of the sequence it was compared with (the most recently extended one)."""
    sequence_index: int
    token_index: int
    """First prompt position differing from that sequence (its length if the prompt is shorter)."""
    expected_tokens: tuple[int, ...]
    actual_tokens: tuple[int, ...]
    expected_text: str | None
    actual_text: str | None
    kind: DriftKind


@dataclass(frozen=True)
class Gap:
    """A call whose writer vouches for a prompt prefix no recorded call of the rollout ended at:
    the span of the call that produced those tokens was lost. Without this, the lost call's
    sampled tokens would silently become observations of the next one."""

    call_index: int
    claimed_prefix_length: int
    """The writer's ``agl_tinker.prefix_length``."""


@dataclass(frozen=True)
class TokenSequence:
    index: int
    call_indices: tuple[int, ...]
    observation_tokens: int
    action_tokens: int

    @property
    def length(self) -> int:
        return self.observation_tokens + self.action_tokens


@dataclass(frozen=True)
class AlignedStep:
    call_index: int
    sequence_index: int
    ob: tinker.ModelInput
    """The call's full prompt: it extends the previous step's ob + ac within a sequence."""
    ac: TokensWithLogprobs
    observation_tokens: int
    """Prompt tokens this step adds to its sequence (masked in the datum)."""


@dataclass(frozen=True)
class Alignment:
    steps: tuple[AlignedStep, ...]
    """Grouped by sequence (in order of creation), call order within a sequence."""
    sequences: tuple[TokenSequence, ...]
    drift: tuple[DriftEvent, ...]
    skipped: tuple[tuple[int, str], ...]
    """(call index, reason) of calls not trained; their tokens may be context of later calls."""
    metrics: Mapping[str, int]
    gaps: tuple[Gap, ...] = ()

    @property
    def step_calls(self) -> tuple[int, ...]:
        """Call index of each step: the sequences' call indices, one after another."""
        if len(self.sequences) == 1:  # the usual case: already a tuple
            return self.sequences[0].call_indices
        return tuple([step.call_index for step in self.steps])

    def trajectory(self, step_rewards: Sequence[float] | None = None) -> Trajectory:
        """The cookbook ``Trajectory``; ``episode_done`` marks the last transition."""
        rewards = step_rewards if step_rewards is not None else [0.0] * len(self.steps)
        if len(rewards) != len(self.steps):
            raise ValueError(f"{len(rewards)} rewards for {len(self.steps)} steps")
        last = len(self.steps) - 1
        transitions: list[Transition] = []
        for i, (step, reward) in enumerate(zip(self.steps, rewards, strict=True)):
            transition = _new(Transition)  # construct(), inlined: once per step
            _set(
                transition,
                "__dict__",
                {
                    "ob": step.ob,
                    "ac": step.ac,
                    "reward": float(reward),
                    "episode_done": i == last,
                    "metrics": {},
                    "logs": {"call_index": step.call_index, "sequence_index": step.sequence_index},
                },
            )
            transitions.append(transition)
        return construct(Trajectory, {"transitions": transitions, "final_ob": _EMPTY, "stop_reason": None})


class _Seq:
    __slots__ = ("acts", "anchors", "calls", "end_fingerprint", "end_len", "index", "last", "obs", "steps")

    def __init__(self, index: int) -> None:
        self.index = index
        self.steps: list[AlignedStep] = []
        self.calls: list[int] = []
        self.end_fingerprint: Any = None
        """Writer's fingerprint of the sequence's ``end_len`` tokens (the usual continuation point)."""
        self.anchors: dict[int, LLMCall] = {}
        """Further points a later call may continue from: untrainable calls, by where they ended."""
        self.end_len = 0
        self.obs = 0
        self.acts = 0
        self.last: LLMCall | None = None


_EMPTY = tinker.ModelInput(chunks=[])  # frozen: safe to share


def _same(a: Sequence[int], b: Sequence[int]) -> bool:
    if type(a) is type(b):
        return a == b
    return list(a) == list(b)


def _starts_with(prompt: Sequence[int], head: Sequence[int], tail: Sequence[int]) -> bool:
    """``prompt`` starts with ``head + tail``; cheap end checks first, then an exact comparison."""
    n, m = len(head), len(tail)
    if len(prompt) < n + m:
        return False
    if m and prompt[n + m - 1] != tail[-1]:
        return False
    if n and prompt[n - 1] != head[-1]:
        return False
    return _same(prompt[n : n + m], tail) and _same(prompt[:n], head)


def _claim(call: LLMCall) -> int | None:
    """The prompt prefix length the writer says continues an earlier call (``None``: no claim)."""
    claimed = call.attributes.get(AGL_PREFIX_LENGTH)
    return claimed if type(claimed) is int else None


def _continues(prompt: Sequence[int], end: LLMCall, counts: dict[str, int]) -> bool:
    counts["exact_checks"] += 1
    assert end.prompt_token_ids is not None and end.response_token_ids is not None
    return _starts_with(prompt, end.prompt_token_ids, end.response_token_ids)


def _extends(call: LLMCall, seq: _Seq, claimed: int | None, counts: dict[str, int]) -> bool:
    """``call``'s prompt starts with ``seq``'s tokens, or with those of an untrainable call that
    continued it. A writer's claim names the end it continued (a prompt that also happens to
    start with a shorter end continues nothing of it), and differing fingerprints rule a match
    out; only the tokens rule it in (a fingerprint can outlive a changed token, and spans from
    several writers may be merged)."""
    prompt = call.prompt_token_ids
    last = seq.last
    assert prompt is not None and last is not None
    if claimed is not None and claimed != seq.end_len:
        anchor = seq.anchors.get(claimed)
        return anchor is not None and _continues(prompt, anchor, counts)
    if claimed is not None and seq.end_fingerprint is not None:
        counts["fingerprint_checks"] += 1
        if seq.end_fingerprint != call.attributes.get(AGL_PREFIX_FINGERPRINT, seq.end_fingerprint):
            return False  # the writer hashed other tokens for the same length: they differ
    if len(prompt) >= seq.end_len and _continues(prompt, last, counts):
        return True
    if claimed is None:  # no claim: it may continue an untrainable call's end (latest first)
        for end in reversed(seq.anchors.values()):
            if _continues(prompt, end, counts):
                return True
    return False


def _first_difference(prompt: Sequence[int], expected: list[int]) -> int:
    """First index where they differ, or the shorter length (runs only on a mismatch)."""
    n = min(len(prompt), len(expected))
    block = 512
    for start in range(0, n, block):
        end = min(start + block, n)
        a, b = list(prompt[start:end]), expected[start:end]
        if a != b:
            return start + next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return n


def _drift(call: LLMCall, seq: _Seq, decode: Decode | None, window: int) -> DriftEvent:
    last = seq.last
    assert last is not None and call.prompt_token_ids is not None
    assert last.prompt_token_ids is not None and last.response_token_ids is not None
    expected = list(last.prompt_token_ids) + list(last.response_token_ids)
    prompt = call.prompt_token_ids
    at = _first_difference(prompt, expected)
    lo = max(0, at - window)
    exp_win = tuple(expected[lo : at + window])
    act_win = tuple(prompt[lo : at + window])
    concurrent = call.start_time is not None and last.end_time is not None and call.start_time < last.end_time
    return DriftEvent(
        call_index=call.index,
        expected_call_index=last.index,
        sequence_index=seq.index,
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


def align_calls(
    calls: Iterable[LLMCall],
    *,
    decode: Decode | None = None,
    options: AlignOptions = AlignOptions(),
    other_ends: Collection[int] = (),
) -> Alignment:
    """Token sequences for one rollout's calls (in call order, as ``reconstruct`` returns them).

    Every extension is confirmed on the tokens; a call whose writer vouches for a prefix that no
    earlier call ended at is a :class:`Gap`. ``other_ends``: prompt + response lengths of the
    rollout's calls left out of ``calls`` (``Reconstruction.filtered_ends``), which are no gap.
    """
    seqs: list[_Seq] = []
    recent: list[_Seq] = []  # most recently extended last
    drift: list[DriftEvent] = []
    skipped: list[tuple[int, str]] = []
    gaps: list[Gap] = []
    ends: set[int] = set(other_ends)  # where earlier calls' tokens ended
    unknown_end = False  # an earlier call without token ids: a claim may be about it
    counts = {"fingerprint_checks": 0, "exact_checks": 0}
    n_calls = 0
    for call in calls:
        n_calls += 1
        prompt, response = call.prompt_token_ids, call.response_token_ids
        if prompt is None or response is None or not prompt:
            unknown_end = True
            skipped.append((call.index, str(call.problem)))
            continue
        attrs = call.attributes
        claimed = _claim(call)
        if claimed is not None and claimed not in ends:
            if not unknown_end:
                gaps.append(Gap(call.index, claimed))
            claimed = None  # it names no call we have: the tokens alone decide
        match: _Seq | None = None
        if recent:
            for seq in reversed(recent[-options.max_candidates :]):  # the latest first: usually it
                if _extends(call, seq, claimed, counts):
                    match = seq
                    break
        full_len = len(prompt) + len(response)
        ends.add(full_len)
        fingerprint = attrs.get(AGL_SEQUENCE_FINGERPRINT)
        if call.problem is not None:
            # Not trainable, but a later call may continue it: remember where it ended.
            if match is not None:
                match.anchors[full_len] = call
            skipped.append((call.index, str(call.problem)))
            continue
        if match is None:
            if recent:
                drift.append(_drift(call, recent[-1], decode, options.window))
            match = _Seq(len(seqs))
            seqs.append(match)
            recent.append(match)
        elif match is not recent[-1]:
            recent.remove(match)
            recent.append(match)
        new_obs = len(prompt) - match.end_len
        logprobs = call.logprobs
        assert logprobs is not None
        # Token lists are shared with the call (as the ob's prompt is), copied only if not lists.
        ac = {
            "tokens": response if type(response) is list else list(response),
            "maybe_logprobs": logprobs if type(logprobs) is list else list(logprobs),
            "stop_reason": "length" if call.finish_reason == "length" else "stop",
        }
        tokens_with_logprobs = _new(TokensWithLogprobs)  # construct(), inlined: once per call
        _set(tokens_with_logprobs, "__dict__", ac)
        step = _new(AlignedStep)
        _set(
            step,
            "__dict__",
            {
                "call_index": call.index,
                "sequence_index": match.index,
                "ob": model_input(prompt),
                "ac": tokens_with_logprobs,
                "observation_tokens": new_obs,
            },
        )
        match.steps.append(step)
        match.calls.append(call.index)
        match.obs += new_obs
        match.acts += len(response)
        match.end_len = full_len
        match.end_fingerprint = fingerprint
        if match.anchors:
            match.anchors = {}
        match.last = call

    if len(seqs) > 1 and _merge_cookbook_continuations(seqs):
        for seq in seqs:
            seq.steps = [
                AlignedStep(s.call_index, seq.index, s.ob, s.ac, s.observation_tokens) for s in seq.steps
            ]
    sequences = tuple(
        [
            construct(
                TokenSequence,
                {
                    "index": seq.index,
                    "call_indices": tuple(seq.calls),
                    "observation_tokens": seq.obs,
                    "action_tokens": seq.acts,
                },
            )
            for seq in seqs
        ]
    )
    if len(seqs) == 1:  # the usual case
        steps = tuple(seqs[0].steps)
        obs, acts = seqs[0].obs, seqs[0].acts
    else:
        steps = tuple([step for seq in seqs for step in seq.steps])
        obs, acts = sum([seq.obs for seq in seqs]), sum([seq.acts for seq in seqs])
    concurrent = sum([d.kind is DriftKind.CONCURRENT for d in drift]) if drift else 0
    metrics = {
        "calls": n_calls,
        "trained_calls": len(steps),
        "skipped_calls": len(skipped),
        "sequences": len(sequences),
        "drift_events": len(drift) - concurrent,
        "concurrent_branches": concurrent,
        "observation_tokens": obs,
        "action_tokens": acts,
        "fingerprint_checks": counts["fingerprint_checks"],
        "exact_checks": counts["exact_checks"],
        "gaps": len(gaps),
    }
    return construct(
        Alignment,
        {
            "steps": steps,
            "sequences": sequences,
            "drift": tuple(drift),
            "skipped": tuple(skipped),
            "metrics": metrics,
            "gaps": tuple(gaps),
        },
    )


def _merge_cookbook_continuations(seqs: list[_Seq]) -> bool:
    """The cookbook merges consecutive transitions whenever one's ob extends the accumulated
    tokens. Sequences are emitted one after another, so if a sequence's first prompt happens to
    extend the previous sequence's final tokens, fold it in to keep one datum per sequence."""
    merged = False
    i = 1
    while i < len(seqs):
        prev, cur = seqs[i - 1], seqs[i]
        first = cur.steps[0]
        last = prev.last
        assert last is not None and last.prompt_token_ids is not None and last.response_token_ids is not None
        prompt = first.ob.chunks[0].tokens  # type: ignore[union-attr]
        if len(prompt) >= prev.end_len and _starts_with(
            prompt, last.prompt_token_ids, last.response_token_ids
        ):
            delta = len(prompt) - prev.end_len
            prev.steps.append(AlignedStep(first.call_index, prev.index, first.ob, first.ac, delta))
            prev.steps.extend(cur.steps[1:])
            prev.calls.extend(cur.calls)
            prev.obs += cur.obs - first.observation_tokens + delta
            prev.acts += cur.acts
            prev.end_len, prev.last = cur.end_len, cur.last
            del seqs[i]
            for j, seq in enumerate(seqs):
                seq.index = j
            merged = True
        else:
            i += 1
    return merged


# --- one rollout, end to end -------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutTrajectory:
    """Everything the training loop needs from one rollout, and everything it should log."""

    rollout_id: str | None
    trajectory: Trajectory | None
    """``None`` when the rollout is excluded (and not scored)."""
    exclusion: ExclusionReason | None
    reconstruction: Reconstruction
    alignment: Alignment
    attribution: RewardAttribution

    @property
    def metrics(self) -> dict[str, float]:
        """Flat counters for logging (built on demand: most rollouts are never logged one by one)."""
        out: dict[str, float] = {f"reconstruct/{k}": v for k, v in self.reconstruction.metrics.items()}
        out.update({f"align/{k}": v for k, v in self.alignment.metrics.items()})
        out["reward/events"] = self.attribution.reward_events
        out["reward/return"] = self.attribution.episode_return
        return out


def problem_metrics(rollouts: Iterable[RolloutTrajectory], prefix: str = "") -> dict[str, int]:
    """A step's counts of what the core refused or found wrong, summed over its rollouts:
    ``calls/problem/<reason>`` (calls not trained), ``rewards/problem/<reason>`` (reward spans
    that excluded their rollout), ``align/gaps`` (lost calls) and ``tool_calls/parse_failures``
    (tool calls the policy wrote that did not parse; the agent got them as text)."""
    out: dict[str, int] = {f"{prefix}align/gaps": 0, f"{prefix}tool_calls/parse_failures": 0}
    for r in rollouts:
        for key, value in r.reconstruction.metrics.items():
            if key.startswith("problem/"):
                name = f"{prefix}calls/{key}"
            elif key.startswith("reward_problem/"):
                name = f"{prefix}rewards/problem/{key[len('reward_problem/') :]}"
            elif key == "tool_call_parse_failures":
                name = f"{prefix}tool_calls/parse_failures"
            else:
                continue
            out[name] = out.get(name, 0) + value
        out[f"{prefix}align/gaps"] += len(r.alignment.gaps)
    return out


# Frozen, so one shared instance each (building them per rollout is measurable at this rate).
_RECONSTRUCT_DEFAULTS, _ALIGN_DEFAULTS, _REWARD_DEFAULTS = (
    ReconstructOptions(),
    AlignOptions(),
    RewardOptions(),
)


def rollout_trajectory(
    spans: Iterable[Any],
    *,
    status: str | None,
    decode: Decode | None = None,
    reconstruct_options: ReconstructOptions | None = None,
    align_options: AlignOptions | None = None,
    reward_options: RewardOptions | None = None,
) -> RolloutTrajectory:
    """Spans of one rollout -> its cookbook ``Trajectory`` (or why it is excluded).

    ``status``: the rollout's status (``Rollout.status``, or the attempt's for timeouts); ``None``
    when the caller already knows it finished.
    """
    rec = reconstruct(spans, reconstruct_options or _RECONSTRUCT_DEFAULTS)
    align_options = align_options or _ALIGN_DEFAULTS
    alignment = align_calls(rec.calls, decode=decode, options=align_options, other_ends=rec.filtered_ends)
    gaps = len(alignment.gaps) if align_options.on_gap == "exclude" else 0
    attribution = attribute_rewards(
        rec.rewards, alignment.step_calls, status, reward_options or _REWARD_DEFAULTS, gaps=gaps
    )
    trajectory: Trajectory | None = None
    if attribution.trainable:
        if alignment.steps:
            trajectory = alignment.trajectory(attribution.step_rewards)
        else:
            # A scored rollout with nothing to train still counts in its group's mean: the
            # cookbook's own convention is one empty transition carrying the reward.
            transition = Transition(
                ob=_EMPTY,
                ac=TokensWithLogprobs(tokens=[], maybe_logprobs=[]),
                reward=attribution.episode_return,
                episode_done=True,
            )
            trajectory = Trajectory(transitions=[transition], final_ob=_EMPTY)
    return construct(
        RolloutTrajectory,
        {
            "rollout_id": rec.rollout_id,
            "trajectory": trajectory,
            "exclusion": attribution.exclusion,
            "reconstruction": rec,
            "alignment": alignment,
            "attribution": attribution,
        },
    )


@dataclass(frozen=True)
class GroupReport:
    selection: GroupSelection
    exclusions: Mapping[str, int]


def trajectory_group(
    rollouts: Sequence[RolloutTrajectory | None], *, min_valid: int | None = None
) -> tuple[TrajectoryGroup | None, GroupReport]:
    """A cookbook ``TrajectoryGroup`` from the rollouts of one task, or ``None`` if it is dropped.

    ``None`` entries are rollouts that produced no spans at all; they count as excluded.
    ``min_valid`` defaults to ``RewardOptions().min_valid_per_group``.
    """
    attributions = [r.attribution if r is not None else None for r in rollouts]
    if min_valid is None:
        min_valid = RewardOptions().min_valid_per_group
    selection = select_group(attributions, min_valid)
    exclusions: dict[str, int] = {}
    for r in rollouts:
        reason = "no_spans" if r is None else (str(r.exclusion) if r.exclusion is not None else None)
        if reason is not None:
            exclusions[reason] = exclusions.get(reason, 0) + 1
    report = GroupReport(selection, exclusions)
    if selection.dropped:
        return None, report
    trajectories = []
    for i in selection.kept:
        r = rollouts[i]
        assert r is not None and r.trajectory is not None
        trajectories.append(r.trajectory)
    group = TrajectoryGroup(
        trajectories_G=trajectories,
        final_rewards_G=[0.0] * len(trajectories),
        metrics_G=[{} for _ in trajectories],
    )
    return group, report
