"""Message-to-token alignment: ordered LLM calls -> token sequences the cookbook turns into datums.

A sequence grows while each call's prompt starts with the sequence so far (the previous call's
prompt + sampled response): its new prompt tokens are masked observations, its response tokens are
trained actions with their own logprobs. When a prompt does not continue any open sequence (the
history was re-rendered differently: drift; or calls ran concurrently) the call starts a new
sequence and the event is reported with the first differing token, so nothing is ever trained on
tokens the model did not sample. Every extension is confirmed on the tokens; the writer's prefix
claims and fingerprints (see :mod:`agl_tinker.spans`) only name which end a call continued, or
rule a match out.

Which earlier call a call follows (the one rule, see :func:`align_calls`): the call whose tokens
(prompt + response) its prompt shares the longest prefix with, among the ends of the most recent
``max_candidates`` sequences (their last calls, and the untrainable calls that continued them);
ties go to the most recently extended sequence (and, within one, to the latest end). A prompt
that continues that call exactly extends its sequence; one that does not is drift (or
concurrency) reported against that call.
So a call that continues an older, shorter end exactly but re-renders a later call's tokens is
drift against the later call, whatever the writer claimed: the conversation went through the
later call, and its history no longer matches what was sampled there.

Output: steps grouped by sequence, so the trajectory built from them
(:func:`agl_tinker.core.trajectory.alignment_trajectory`) gives
``tinker_cookbook.rl.data_processing.trajectory_to_data`` exactly one datum per sequence.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import tinker
from tinker_cookbook.completers import TokensWithLogprobs

from agl_tinker.core.drift import Decode, DriftEvent, DriftKind, drift_event, first_difference
from agl_tinker.core.steps import AlignedStep, Alignment, AlignOptions, Gap, TokenSequence
from agl_tinker.core.types import LLMCall
from agl_tinker.core.validate import starts_with
from agl_tinker.spans import AGL_PREFIX_FINGERPRINT, AGL_PREFIX_LENGTH, AGL_SEQUENCE_FINGERPRINT

__all__ = [
    "align_calls",
    "model_input",
]


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


def model_input(tokens: Sequence[int]) -> tinker.ModelInput:
    """``tinker.ModelInput.from_ints(tokens)``, sharing ``tokens`` instead of copying them.

    Validating the chunk copies the token list, which is O(history) per call (prompts grow with
    the conversation) and was the measured cost; the ids were already checked by
    :mod:`agl_tinker.core.validate`, so the chunk is built with pydantic's public
    ``model_construct``. The ``ModelInput`` around it is validated: that keeps the chunk as it is.
    """
    return tinker.ModelInput(chunks=[tinker.EncodedTextChunk.model_construct(tokens=tokens)])


def _claim(call: LLMCall) -> int | None:
    """The prompt prefix length the writer says continues an earlier call (``None``: no claim)."""
    claimed = call.attributes.get(AGL_PREFIX_LENGTH)
    return claimed if type(claimed) is int else None


def _continues(call: LLMCall, end: LLMCall, counts: dict[str, int]) -> bool:
    """``call``'s prompt starts with ``end``'s prompt + response: validation found it so (see
    :attr:`LLMCall.prefix_call`), or the tokens say so now."""
    counts["exact_checks"] += 1
    if call.prefix_call == end.index:
        return True
    assert call.prompt_token_ids is not None
    assert end.prompt_token_ids is not None and end.response_token_ids is not None
    return starts_with(call.prompt_token_ids, end.prompt_token_ids, end.response_token_ids)


def _continued_end(call: LLMCall, seq: _Seq, claimed: int | None, counts: dict[str, int]) -> LLMCall | None:
    """The end of ``seq`` that ``call``'s prompt starts with: an untrainable call that continued the
    sequence (they end later), or its last call (``None``: neither). A writer's claim names the end it continued (a prompt
    that also happens to start with a shorter end continues nothing of it), and differing
    fingerprints rule a match out; only the tokens rule it in (a fingerprint can outlive a changed
    token, and spans from several writers may be merged)."""
    prompt = call.prompt_token_ids
    last = seq.last
    assert prompt is not None and last is not None
    if claimed is not None and claimed != seq.end_len:
        anchor = seq.anchors.get(claimed)
        return anchor if anchor is not None and _continues(call, anchor, counts) else None
    if claimed is not None and seq.end_fingerprint is not None:
        counts["fingerprint_checks"] += 1
        if seq.end_fingerprint != call.attributes.get(AGL_PREFIX_FINGERPRINT, seq.end_fingerprint):
            return None  # the writer hashed other tokens for the same length: they differ
    if claimed is None:  # no claim: it may continue an untrainable call's end (latest, longest first)
        for end in reversed(seq.anchors.values()):
            if _continues(call, end, counts):
                return end
    if len(prompt) >= seq.end_len and _continues(call, last, counts):
        return last
    return None


def _ends(seqs: Iterable[_Seq]) -> Iterator[tuple[_Seq, LLMCall]]:
    """Every end of ``seqs`` a call may follow, each sequence's latest end first."""
    for seq in seqs:
        assert seq.last is not None
        for end in reversed(seq.anchors.values()):
            yield seq, end
        yield seq, seq.last


def _end_length(end: LLMCall) -> int:
    assert end.prompt_token_ids is not None and end.response_token_ids is not None
    return len(end.prompt_token_ids) + len(end.response_token_ids)


def _agrees(prompt: Sequence[int], end: LLMCall, n: int) -> bool:
    """``prompt`` and ``end``'s tokens (prompt + response) agree on their first ``n`` tokens."""
    assert end.prompt_token_ids is not None and end.response_token_ids is not None
    if n == 0:
        return True
    if len(prompt) < n or _end_length(end) < n:
        return False
    head = end.prompt_token_ids
    last = head[n - 1] if n <= len(head) else end.response_token_ids[n - 1 - len(head)]
    if prompt[n - 1] != last:  # the usual answer, from one token
        return False
    return first_difference(prompt, [*head, *end.response_token_ids][:n]) >= n


def _shares_more(
    call: LLMCall, ends: list[tuple[_Seq, LLMCall]], match: LLMCall
) -> list[tuple[_Seq, LLMCall]]:
    """The ends (of ``ends``, in their order) that ``call``'s prompt shares a longer prefix with
    than with ``match``, the end it continues exactly, ties counting for the ends ranked before
    it (more recent). Each one is longer than ``match``: the conversation went past it."""
    prompt = call.prompt_token_ids
    assert prompt is not None
    n = _end_length(match)
    rank = next(i for i, (_, end) in enumerate(ends) if end is match)
    return [
        (seq, end)
        for i, (seq, end) in enumerate(ends)
        if end is not match and _end_length(end) > n and _agrees(prompt, end, n + (i > rank))
    ]


def _followed(call: LLMCall, ends: Iterable[tuple[_Seq, LLMCall]]) -> tuple[_Seq, LLMCall]:
    """The end (and its sequence) whose tokens ``call``'s prompt shares the longest prefix with;
    ties go to the earliest of ``ends`` (the most recently extended sequence's come first)."""
    prompt = call.prompt_token_ids
    assert prompt is not None
    best: tuple[_Seq, LLMCall] | None = None
    best_shared = -1
    for seq, end in ends:
        assert end.prompt_token_ids is not None and end.response_token_ids is not None
        shared = first_difference(prompt, [*end.prompt_token_ids, *end.response_token_ids])
        if shared > best_shared:
            best, best_shared = (seq, end), shared
    assert best is not None
    return best


_DEFAULT_OPTIONS = AlignOptions()


def align_calls(
    calls: Iterable[LLMCall],
    *,
    decode: Decode | None = None,
    options: AlignOptions = _DEFAULT_OPTIONS,
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
                gaps.append(Gap(call_index=call.index, claimed_prefix_length=claimed))
            claimed = None  # it names no call we have: the tokens alone decide
        match: _Seq | None = None
        followed: tuple[_Seq, LLMCall] | None = None  # what a drift is reported against
        candidates = recent[-options.max_candidates :][::-1]  # the latest first: usually it
        for seq in candidates:
            end = _continued_end(call, seq, claimed, counts)
            if end is not None:
                match = seq
                # An end that shares more than this one is the conversation the call went
                # through: it re-rendered that end's tokens (drift), see the module docstring.
                longer = _shares_more(call, list(_ends(candidates)), end)
                if longer:
                    match, followed = None, _followed(call, longer)
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
                seq, end = followed or _followed(call, _ends(candidates))
                drift.append(drift_event(call, end, seq.index, decode=decode, window=options.window))
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
        ac = TokensWithLogprobs(
            tokens=response if type(response) is list else list(response),
            maybe_logprobs=logprobs if type(logprobs) is list else list(logprobs),
            stop_reason="length" if call.finish_reason == "length" else "stop",
        )
        step = AlignedStep(
            call_index=call.index,
            sequence_index=match.index,
            ob=model_input(prompt),
            ac=ac,
            observation_tokens=new_obs,
            sampled_sequence_id=call.sampled_sequence_id,
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
            seq.steps = [replace(step, sequence_index=seq.index) for step in seq.steps]
    sequences = tuple(
        TokenSequence(
            index=seq.index,
            call_indices=tuple(seq.calls),
            observation_tokens=seq.obs,
            action_tokens=seq.acts,
        )
        for seq in seqs
    )
    steps = tuple(step for seq in seqs for step in seq.steps)
    obs, acts = sum(seq.obs for seq in seqs), sum(seq.acts for seq in seqs)
    concurrent = sum(d.kind is DriftKind.CONCURRENT for d in drift)
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
    return Alignment(
        steps=steps,
        sequences=sequences,
        drift=tuple(drift),
        skipped=tuple(skipped),
        metrics=metrics,
        gaps=tuple(gaps),
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
        if len(prompt) >= prev.end_len and starts_with(
            prompt, last.prompt_token_ids, last.response_token_ids
        ):
            delta = len(prompt) - prev.end_len
            prev.steps.append(replace(first, sequence_index=prev.index, observation_tokens=delta))
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
