"""Token validation checks each call past the prefix it continues, and reports exactly what
checking every call whole reports (a whole-call reference below is the spec)."""

from __future__ import annotations

import math
from array import array
from hashlib import blake2b
from typing import Any

from agentlightning.types import Span
from hypothesis import given, settings
from hypothesis import strategies as st
from spanfactory import conversation, span_id

from agl_tinker import spans as S
from agl_tinker.core.align import align_calls
from agl_tinker.core.reconstruct import reconstruct
from agl_tinker.core.types import CallProblem, LLMCall, ReconstructOptions

VOCAB = 150_000
OPTIONS = ReconstructOptions(vocab_size=VOCAB)


def whole_call_problem(call: LLMCall, attrs: dict[str, Any]) -> CallProblem | None:
    """The spec: the call's own prompt + response checked alone, as if no other call existed."""
    prompt, response = attrs.get(S.PROMPT_TOKEN_IDS), attrs.get(S.RESPONSE_TOKEN_IDS)
    try:
        ids = array("I", prompt)
        ids.extend(response)
    except TypeError:
        return CallProblem.MALFORMED_TOKEN_IDS
    except OverflowError:
        return CallProblem.TOKEN_ID_OUT_OF_RANGE
    if ids and max(ids) >= VOCAB:
        return CallProblem.TOKEN_ID_OUT_OF_RANGE
    fingerprint = attrs.get(S.AGL_SEQUENCE_FINGERPRINT)
    if fingerprint is not None and blake2b(ids, digest_size=16).hexdigest() != fingerprint:
        return CallProblem.FINGERPRINT_MISMATCH
    logprobs = attrs.get(S.AGL_RESPONSE_LOGPROBS)
    if logprobs and not (math.isfinite(sum(logprobs)) and max(logprobs) <= OPTIONS.logprob_tolerance):
        return CallProblem.BAD_LOGPROBS
    return None


def _with(spans: list[Span], sid: str, key: str, position: int, value: Any, *, rehash: bool) -> list[Span]:
    out = []
    for s in spans:
        if s.span_id == sid:
            attrs = dict(s.attributes)
            ids = list(attrs[key])
            ids[position] = value
            attrs[key] = ids
            if rehash:
                attrs[S.AGL_SEQUENCE_FINGERPRINT] = S.token_fingerprint(
                    [*attrs[S.PROMPT_TOKEN_IDS], *attrs[S.RESPONSE_TOKEN_IDS]]
                )
            s = s.model_copy(update={"attributes": attrs})
        out.append(s)
    return out


def test_each_call_records_the_checked_call_it_continues() -> None:
    for writer in ("agl", "client"):
        _, spans = conversation(4, writer=writer)  # type: ignore[arg-type]
        calls = reconstruct(spans, OPTIONS).calls
        assert [c.prefix_call for c in calls] == [None, 0, 1, 2], writer
        assert align_calls(calls).metrics["sequences"] == 1


def test_a_call_continuing_a_rejected_call_is_checked_whole() -> None:
    _, spans = conversation(3)
    spans = _with(spans, span_id(1), S.RESPONSE_TOKEN_IDS, 3, VOCAB + 5, rehash=True)
    calls = reconstruct(spans, OPTIONS).calls
    assert calls[1].problem is CallProblem.TOKEN_ID_OUT_OF_RANGE
    # Call 2 continues the tokens sampled, which no checked call ends with: checked whole, it passes.
    assert calls[2].problem is None and calls[2].prefix_call is None


CORRUPTIONS = st.sampled_from(["other id", "out of vocab", "negative", "not an int", "huge"])


def _value(kind: str, old: int) -> Any:
    return {
        "other id": (old + 1) % VOCAB,
        "out of vocab": VOCAB + old,
        "negative": -1 - old,
        "not an int": f"{old}",
        "huge": 2**40 + old,
    }[kind]


@settings(max_examples=60, deadline=None)
@given(
    n_calls=st.integers(2, 5),
    target=st.integers(0, 4),
    key=st.sampled_from([S.PROMPT_TOKEN_IDS, S.RESPONSE_TOKEN_IDS]),
    where=st.floats(0, 1, exclude_max=True),
    kind=CORRUPTIONS,
    rehash=st.booleans(),
    writer=st.sampled_from(["agl", "client"]),
)
def test_checking_past_the_prefix_reports_what_checking_whole_calls_reports(
    n_calls: int, target: int, key: str, where: float, kind: str, rehash: bool, writer: Any
) -> None:
    _, spans = conversation(n_calls, first_prompt=12, answer=4, turn_obs=3, writer=writer)
    sid = span_id(target % n_calls)
    length = len(next(s for s in spans if s.span_id == sid).attributes[key])
    position = int(where * length)
    old = next(s for s in spans if s.span_id == sid).attributes[key][position]
    spans = _with(
        spans, sid, key, position, _value(kind, old), rehash=rehash and kind in ("other id", "out of vocab")
    )
    calls = reconstruct(spans, OPTIONS).calls
    attrs = {s.span_id: dict(s.attributes) for s in spans}
    assert [c.problem for c in calls] == [whole_call_problem(c, attrs[c.span_id]) for c in calls]
