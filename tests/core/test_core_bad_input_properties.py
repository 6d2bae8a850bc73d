"""Property tests for bad input (issue 14) over real span shapes from all three writers the core
reads (our endpoint, LLMProxy with its raw child span, the AgentOps client tracer): any
permutation with duplicates reconstructs identically; every dropped span or corrupted value is
either reported (a problem, exclusion, drift or gap counter changes) or provably harmless (what
is trained is exactly what the intact spans give); nothing escapes ``rollout_trajectory``.

What no reader can detect is left out on purpose, with the reason: a token id replaced by
another valid id, or a token list cut to its valid head, in a span without our writer's
fingerprint (the client and proxy formats carry none), and a reward replaced by another valid
reward, are indistinguishable from a genuine run."""

from __future__ import annotations

import math
import random
from typing import Any

from agentlightning.types import Span
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spanfactory import span_id
from test_reconstruct_properties import VOCAB, Run, encode, runs

from agl_tinker import spans as S
from agl_tinker.core.trajectory import RolloutTrajectory, rollout_trajectory
from agl_tinker.core.types import ReconstructOptions

OPTIONS = ReconstructOptions(vocab_size=VOCAB)
IGNORED_COUNTS = ("spans", "duplicate_spans", "merged_spans")
"""Counts of the spans handed over, which duplicates change by design."""


def _process(spans: list[Span], served_calls: int | None = None) -> RolloutTrajectory:
    return rollout_trajectory(
        spans, status="succeeded", decode=_decode, reconstruct_options=OPTIONS, served_calls=served_calls
    )


def _decode(ids: list[int]) -> str:
    if any(not 0 <= i < VOCAB for i in ids):
        raise OverflowError("out of range integral type conversion attempted")  # as HF tokenizers do
    return " ".join(map(str, ids))


def trained(result: RolloutTrajectory) -> tuple[Any, ...]:
    """Everything that reaches the cookbook: per step its call, tokens, logprobs and reward."""
    if result.trajectory is None:
        return ()
    steps = tuple(
        (
            result.reconstruction.calls[step.call_index].span_id,
            tuple(step.ob.chunks[0].tokens) if step.ob.chunks else (),  # type: ignore[union-attr]
            tuple(step.ac.tokens),
            tuple(step.ac.maybe_logprobs or ()),
            step.observation_tokens,
        )
        for step in result.alignment.steps
    )
    return (steps, result.attribution.step_rewards, result.attribution.episode_return)


def report(result: RolloutTrajectory) -> tuple[Any, ...]:
    """Every way the core says something is wrong."""
    rec, alignment = result.reconstruction, result.alignment
    problems = tuple(sorted((k, v) for k, v in rec.metrics.items() if "problem/" in k))
    return (
        result.exclusion,
        problems,
        tuple((d.call_index, d.kind) for d in alignment.drift),
        tuple(g.call_index for g in alignment.gaps),
        alignment.skipped,
        alignment.metrics["sequences"],
        rec.metrics["rewards"],
    )


def _spans_of_call(k: int) -> set[str]:
    main = span_id(k)
    return {main, main[:-1] + "r", span_id(k, "d")}


def check_sound(result: RolloutTrajectory, run: Run) -> None:
    """Whatever the input: every trained step is exactly one call the agent made, with valid ids,
    finite logprobs and a finite, bounded reward."""
    by_span = {sid: run.calls[k] for k in range(len(run.calls)) for sid in _spans_of_call(k)}
    for step in result.alignment.steps if result.trajectory is not None else ():
        call = result.reconstruction.calls[step.call_index]
        want = by_span[call.span_id]
        assert list(step.ob.chunks[0].tokens) == want.prompt  # type: ignore[union-attr]
        assert step.ac.tokens == want.response and step.ac.maybe_logprobs == want.logprobs
        assert all(type(t) is int and 0 <= t < VOCAB for t in want.prompt + want.response)
    if result.trajectory is not None:
        assert math.isfinite(result.attribution.episode_return)
        assert abs(result.attribution.episode_return) <= OPTIONS.max_abs_reward * max(1, len(run.rewards))


def _canonical(result: RolloutTrajectory) -> tuple[Any, ...]:
    rec = result.reconstruction
    metrics = {k: v for k, v in rec.metrics.items() if k not in IGNORED_COUNTS}
    return (rec.calls, rec.rewards, metrics, trained(result), report(result), result.alignment.metrics)


# --- permutations and duplicates -------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(max_calls=24), st.randoms(use_true_random=False))
def test_any_permutation_with_duplicates_reconstructs_identically(run: Run, rng: random.Random) -> None:
    spans = encode(run, "ro-1", "at-1")
    base = _canonical(_process(spans))
    shuffled = [*spans, *(s.model_copy() for s in rng.choices(spans, k=rng.randint(1, 2 * len(spans))))]
    rng.shuffle(shuffled)
    assert _canonical(_process(shuffled)) == base


# --- dropped spans ----------------------------------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(max_calls=16), st.randoms(use_true_random=False))
def test_dropped_spans_are_reported_or_harmless(run: Run, rng: random.Random) -> None:
    spans = encode(run, "ro-1", "at-1")
    llm = [s for s in spans if s.name != S.REWARD_SPAN_NAME]
    dropped = {s.span_id for s in rng.sample(llm, k=rng.randint(1, len(llm)))}
    result = _process([s for s in spans if s.span_id not in dropped])
    check_sound(result, run)
    lost = {k for k in range(len(run.calls)) if _spans_of_call(k) & {s.span_id for s in spans} <= dropped}
    reported_before = {i for i, _ in result.alignment.skipped}
    gaps = {g.call_index for g in result.alignment.gaps}
    calls = result.reconstruction.calls
    for call in calls:
        k = int(call.span_id[1:-1])
        claim = run.calls[k].prefix_length
        if call.source != "agl_tinker" or claim is None or k == 0 or k - 1 not in lost:
            continue
        # It continued a call whose spans are all gone: a gap, unless it or an earlier call is
        # reported already (a call without token ids may be the one it continued). Where another
        # recorded call ended at the claimed length, the loss reads as drift against that call
        # (the writer's claim cannot tell them apart): reported as drift, never trained as actions.
        drifted = any(d.call_index == call.index for d in result.alignment.drift)
        reported = call.problem is not None or drifted or any(i < call.index for i in reported_before)
        assert call.index in gaps or reported, (k, lost)
    if gaps:
        assert result.exclusion is not None and result.trajectory is None
    # With the endpoint's count of the calls it served, no lost call goes unseen, the last included.
    if lost:
        counted = _process([s for s in spans if s.span_id not in dropped], served_calls=len(run.calls))
        assert counted.exclusion is not None and counted.trajectory is None, (lost, len(run.calls))


# --- corrupted values -------------------------------------------------------------------------

BAD_IDS = [-1, VOCAB, 2**32, 2**70, 1.5, 7.0, "3", None, [1], True and -5]
BAD_FLOATS = [math.nan, math.inf, -math.inf, 0.5, 2.0, "x", None, [0.1]]
BAD_SCALARS = [None, -3, 0, 10**9, "12", 1.5, [], {"a": 1}, "", "zz" * 20]


def _corrupt_value(key: str, value: Any, rng: random.Random, fingerprinted: bool) -> Any:
    """A corrupted version of one attribute value, of the kinds a careless writer or store makes."""
    if isinstance(value, list) and value:
        out = list(value)
        shape = rng.choice(["whole", "whole", "shortened", "empty", "str", "text"])
        # Shortened without a fingerprint, the changed value must stay in: a list cut to its
        # valid head is a genuine-looking prompt (see the module docstring).
        keep_in = shape == "shortened" and not fingerprinted and len(out) > 1
        i = rng.randrange(len(out) - 1 if keep_in else len(out))
        if key == S.AGL_RESPONSE_LOGPROBS:
            out[i] = rng.choice(BAD_FLOATS)
        elif fingerprinted and rng.random() < 0.3:
            out[i] = (out[i] + rng.randint(1, 5)) % VOCAB  # valid but changed: the fingerprint knows
        else:
            out[i] = rng.choice(BAD_IDS)
        return {"whole": out, "shortened": out[:-1], "empty": [], "str": str(out), "text": "not a list"}[
            shape
        ]
    if isinstance(value, str) and value.startswith("["):  # stringified lists (proxy raw spans)
        return rng.choice(
            [value.replace(",", ", -1,", 1), value[: len(value) // 2], "[1, 'a']", "{[]: 1}", "[" * 500]
        )
    if key.endswith(".value"):  # rewards: anything but another valid reward
        return rng.choice([math.nan, math.inf, -math.inf, 1e308, -1e300, "0.5", True, [1.0], 10**400])
    return rng.choice(BAD_SCALARS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(max_calls=12), st.randoms(use_true_random=False), st.integers(1, 3))
def test_corrupted_values_are_reported_or_harmless(run: Run, rng: random.Random, n_corruptions: int) -> None:
    spans = encode(run, "ro-1", "at-1")
    base = _process(spans)
    for _ in range(n_corruptions):
        i = rng.randrange(len(spans))
        victim = spans[i]
        keys = sorted(victim.attributes)
        key = rng.choice(keys)
        fingerprinted = S.AGL_SEQUENCE_FINGERPRINT in victim.attributes
        attrs = dict(victim.attributes)
        attrs[key] = _corrupt_value(key, attrs[key], rng, fingerprinted)
        spans[i] = victim.model_copy(update={"attributes": attrs})
    result = _process(spans)
    check_sound(result, run)
    assert trained(result) == trained(base) or report(result) != report(base)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(max_calls=8), st.randoms(use_true_random=False))
def test_removed_attributes_are_reported_or_harmless(run: Run, rng: random.Random) -> None:
    spans = encode(run, "ro-1", "at-1")
    base = _process(spans)
    i = rng.randrange(len(spans))
    attrs = dict(spans[i].attributes)
    for key in rng.sample(sorted(attrs), k=rng.randint(1, len(attrs))):
        del attrs[key]
    spans[i] = spans[i].model_copy(update={"attributes": attrs})
    result = _process(spans)
    check_sound(result, run)
    assert trained(result) == trained(base) or report(result) != report(base)
