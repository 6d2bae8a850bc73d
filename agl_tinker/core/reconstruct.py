"""Span reconstruction: the spans of one rollout -> its ordered LLM calls and reward events.

Pure and O(n log n) in the number of spans: every span is read once (no scan over its attribute
keys, which grow with the conversation), calls are merged by response id, ordered by start time with
a deterministic tie-break, and calls that cannot be trained are kept with a reason instead of being
dropped (the reference lost them silently). Reads three writers: our endpoint and the LLMProxy
(``litellm_request`` + ``raw_gen_ai_request``) and the client-side AgentOps tracer
(``openai.chat.completion``); see :mod:`agl_tinker.spans` for the keys.
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import re
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import numpy as np

from agl_tinker import spans as S
from agl_tinker.core._construct import construct
from agl_tinker.core.rewards import RewardEvent, RewardProblem
from agl_tinker.spans import (
    AGL_AGENT_NAME,
    AGL_RESPONSE_LOGPROBS,
    AGL_SEQUENCE_FINGERPRINT,
    AGL_WEIGHTS_VERSION,
    COMPLETION_FINISH_REASON,
    PROMPT_TOKEN_IDS,
    REQUEST_MODEL,
    RESPONSE_ID,
    RESPONSE_TOKEN_IDS,
)

if TYPE_CHECKING:
    from agentlightning.types import Span

_new = object.__new__
_set = object.__setattr__

__all__ = [
    "CallProblem",
    "LLMCall",
    "ReconstructOptions",
    "Reconstruction",
    "RewardEvent",
    "reconstruct",
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
    FAILED = "failed"


@dataclass(frozen=True)
class LLMCall:
    """One chat completion as recorded; ``problem`` is ``None`` when it can be trained."""

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
    """``agl_tinker`` (our endpoint), ``llm_proxy``, ``llm_proxy_raw`` or ``client``."""
    problem: CallProblem | None
    attributes: Mapping[str, Any] = field(repr=False, compare=False)
    """Attributes of the span in ``span_id``: messages are decoded from them only on demand."""

    @property
    def trainable(self) -> bool:
        return self.problem is None

    @property
    def messages(self) -> list[dict[str, Any]] | None:
        """Input messages, when the span recorded them (decoded lazily: they grow with history)."""
        raw = self.attributes.get(S.AGL_MESSAGES)
        if isinstance(raw, str):
            return list(json.loads(raw))
        return _flat_messages(self.attributes, S.PROMPT_PREFIX)

    @property
    def completion(self) -> dict[str, Any] | None:
        raw = self.attributes.get(S.AGL_COMPLETION)
        if isinstance(raw, str):
            return dict(json.loads(raw))
        flat = _flat_messages(self.attributes, S.COMPLETION_PREFIX)
        return flat[0] if flat else None


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


@dataclass(frozen=True)
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


# --- reading attribute values ------------------------------------------------------------------


_UNREADABLE = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError)
"""What ``json.loads`` / ``ast.literal_eval`` raise on a corrupted value (a set literal of lists
is a ``TypeError``, deep nesting a ``RecursionError``): such a value reads as absent or malformed."""


def _literal(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except _UNREADABLE:
            try:
                return ast.literal_eval(value)
            except _UNREADABLE:
                return None
    return value


_BAD = object()


def _ids(value: Any) -> Any:
    """Token ids as stored (no copy: prompts grow with history), ``None`` if absent, ``_BAD`` if
    malformed. Ints are spot-checked at both ends; the cookbook's tensors validate them fully."""
    if value is None:
        return None
    if isinstance(value, str):
        value = _literal(value)
    if not isinstance(value, (list, tuple)):
        return _BAD
    if value and (type(value[0]) is not int or type(value[-1]) is not int):
        return _BAD
    return value


def _floats(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = _literal(value)
    if not isinstance(value, (list, tuple)):
        return _BAD
    if value and not (isinstance(value[0], (float, int)) and isinstance(value[-1], (float, int))):
        return _BAD
    return value


def _flat_messages(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]] | None:
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


_SOURCE_NAMES = ("agl_tinker", "llm_proxy", "llm_proxy_raw", "client", "other")
_RANK = {name: rank for rank, name in enumerate(_SOURCE_NAMES)}
"""Merge priority of a source (0: our schema, the best)."""

Record = dict[str, Any]
"""One call while its spans are merged: exactly the ``LLMCall`` fields, already of their types
except that malformed token values are ``_BAD``. :func:`reconstruct` sets ``index`` and turns it
into the call's ``__dict__``, so each call's fields are stored once rather than copied."""


def _read_llm_span(span: Span) -> Record:
    """One LLM span as a call. The common values (lists of ints and floats, strings) are checked
    inline; anything else goes through :func:`_ids` / :func:`_floats`, which report it."""
    attrs = span.attributes
    get = attrs.get
    fingerprinted = AGL_SEQUENCE_FINGERPRINT in attrs  # our schema: the best source
    source = "agl_tinker" if fingerprinted else _SOURCE_BY_NAME.get(span.name, "other")
    typical = True  # non-empty lists of ints, ints and floats: the call's problem is only a count
    prompt = get(PROMPT_TOKEN_IDS)
    if not (type(prompt) is list and prompt and type(prompt[0]) is int and type(prompt[-1]) is int):
        prompt, typical = _ids(prompt), False
    response = get(RESPONSE_TOKEN_IDS)
    if not (type(response) is list and response and type(response[0]) is int and type(response[-1]) is int):
        response, typical = _ids(response), False
    logprobs = get(AGL_RESPONSE_LOGPROBS)
    if not (
        type(logprobs) is list and logprobs and type(logprobs[0]) is float and type(logprobs[-1]) is float
    ):
        logprobs, typical = _floats(logprobs), False
    response_id = get(RESPONSE_ID) or get(S.OPERATION_OUTPUT_ID)
    if response_id is not None and not isinstance(response_id, str):
        response_id = None
    finish_reason = get(COMPLETION_FINISH_REASON)
    if finish_reason is None:
        reasons = _literal(get(S.FINISH_REASONS))
        if isinstance(reasons, list) and reasons and isinstance(reasons[0], str):
            finish_reason = reasons[0]
    elif not isinstance(finish_reason, str):
        finish_reason = None
    model = get(REQUEST_MODEL) or get(S.RESPONSE_MODEL)
    if model is not None and type(model) is not str:
        model = str(model)
    version = get(AGL_WEIGHTS_VERSION)
    if (
        version is not None
        and type(version) is not int
        and (type(version) is bool or not isinstance(version, (int, str)))
    ):
        version = None
    agent = get(AGL_AGENT_NAME)
    span_id = span.span_id
    r: Record = {
        "index": 0,
        "span_id": span_id,
        "span_ids": (span_id,),
        "response_id": response_id,
        "prompt_token_ids": prompt,
        "response_token_ids": response,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "start_time": span.start_time,
        "end_time": span.end_time,
        "sequence_id": span.sequence_id,
        "model": model,
        "agent_name": agent if agent is None or isinstance(agent, str) else str(agent),
        "weights_version": version,
        "source": source,
        "problem": None,
        "attributes": attrs,
    }
    if logprobs is None and S.CLIENT_LOGPROBS in attrs:
        r["logprobs"] = _logprobs_from_content(_literal(attrs[S.CLIENT_LOGPROBS]))
    if source == "llm_proxy_raw" or (prompt is None and _HOSTED_PROMPT in attrs):
        _read_hosted_vllm(attrs, r)
    if not typical or len(logprobs) != len(response):  # (a failed span with a response is trainable)
        r["problem"] = _problem(r, span.status.status_code == "ERROR")
    return r


_SOURCE_BY_NAME = {
    S.LLM_CALL_SPAN_NAME: "llm_proxy",
    S.RAW_LLM_CALL_SPAN_NAME: "llm_proxy_raw",
    S.CLIENT_LLM_CALL_SPAN_NAME: "client",
}
_HOSTED_PROMPT = S.HOSTED_VLLM_PREFIX + "prompt_token_ids"


def _logprobs_from_content(content: Any) -> Any:
    if not isinstance(content, list):
        return _BAD
    try:
        return [float(item["logprob"]) for item in content]
    except (TypeError, KeyError, ValueError, OverflowError):
        return _BAD


def _read_hosted_vllm(attrs: Mapping[str, Any], r: Record) -> None:
    """LLMProxy raw spans stringify the provider's request and response (``str(list)``)."""
    p = S.HOSTED_VLLM_PREFIX
    if r["prompt_token_ids"] is None:
        r["prompt_token_ids"] = _ids(attrs.get(p + "prompt_token_ids"))
    if r["response_id"] is None and isinstance(attrs.get(p + "id"), str):
        r["response_id"] = attrs[p + "id"]
    choices = _literal(attrs.get(p + "choices"))
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    if r["response_token_ids"] is None:
        nested = _literal(attrs.get(p + "response_token_ids"))
        if isinstance(nested, list) and nested and isinstance(nested[0], list):
            r["response_token_ids"] = _ids(nested[0])
        elif "token_ids" in choice:
            r["response_token_ids"] = _ids(choice["token_ids"])
    if r["logprobs"] is None and isinstance(choice.get("logprobs"), dict):
        r["logprobs"] = _logprobs_from_content(choice["logprobs"].get("content"))
    if r["finish_reason"] is None and isinstance(choice.get("finish_reason"), str):
        r["finish_reason"] = choice["finish_reason"]


_MERGED_FIELDS = (
    "prompt_token_ids",
    "response_token_ids",
    "logprobs",
    "response_id",
    "model",
    "weights_version",
    "agent_name",
    "finish_reason",
)


def _merge(into: Record, other: Record) -> None:
    """Fill ``into`` (the higher-priority source) from ``other``; times widen to cover both. The
    caller recomputes ``problem`` once merging is done (see :func:`_recheck`)."""
    into["span_ids"] += other["span_ids"]
    for name in _MERGED_FIELDS:
        if into[name] is None and other[name] is not None:
            into[name] = other[name]
    start, end = other["start_time"], other["end_time"]
    if start is not None and (into["start_time"] is None or start < into["start_time"]):
        into["start_time"] = start
    if end is not None and (into["end_time"] is None or end > into["end_time"]):
        into["end_time"] = end
    into["sequence_id"] = min(into["sequence_id"], other["sequence_id"])


def _recheck(r: Record, by_id: Mapping[str, Span]) -> None:
    """A merged call's problem from its merged values; failed only if every span failed."""
    failed = all(by_id[sid].status.status_code == "ERROR" for sid in r["span_ids"])
    r["problem"] = _problem(r, failed)


def _call_key(r: Record) -> str:
    return r["response_id"] or r["span_id"]  # type: ignore[no-any-return]


def _problem(r: Record, failed: bool) -> CallProblem | None:
    prompt, response, logprobs = r["prompt_token_ids"], r["response_token_ids"], r["logprobs"]
    if prompt is _BAD or response is _BAD:
        return CallProblem.MALFORMED_TOKEN_IDS
    if failed and not response:
        return CallProblem.FAILED
    if prompt is None:
        return CallProblem.MISSING_PROMPT_TOKEN_IDS
    if response is None:
        return CallProblem.MISSING_RESPONSE_TOKEN_IDS
    if not prompt:
        return CallProblem.EMPTY_PROMPT
    if logprobs is None or logprobs is _BAD:
        return CallProblem.MISSING_LOGPROBS
    if len(logprobs) != len(response):
        return CallProblem.LOGPROB_COUNT_MISMATCH
    return None


def _merge_calls(records: list[Record], by_id: Mapping[str, Span], has_raw: bool) -> tuple[list[Record], int]:
    """Raw provider spans into their ``litellm_request`` parent, then spans sharing a response id
    (client-side and proxy), in a fixed priority order. Returns the calls and the spans merged.
    ``has_raw``: some record is a raw provider span (counted while reading, to skip a pass)."""
    merged = 0
    if has_raw:
        by_span = {r["span_id"]: r for r in records}
        for sid in sorted(by_span, key=lambda k: (_RANK[by_span[k]["source"]], k)):
            r = by_span[sid]
            parent = by_span.get(by_id[sid].parent_id or "")
            if r["source"] == "llm_proxy_raw" and parent is not None and _RANK[parent["source"]] < 2:
                _merge(parent, r)
                _recheck(parent, by_id)
                del by_span[sid]
                merged += 1
        records = list(by_span.values())
    if len(records) > 1 and len({r["response_id"] or r["span_id"] for r in records}) < len(records):
        groups: dict[str, Record] = {}
        for r in sorted(records, key=lambda rec: (_RANK[rec["source"]], rec["sequence_id"], rec["span_id"])):
            head = groups.setdefault(_call_key(r), r)
            if head is not r:
                _merge(head, r)
                merged += 1
        records = list(groups.values())
        for r in records:
            if len(r["span_ids"]) > 1:
                _recheck(r, by_id)
    return records, merged


# --- validation: the one place the core checks token ids and logprobs -------------------------


def _logprobs_ok(logprobs: Sequence[float], tolerance: float) -> bool:
    """Finite numbers, none above ``tolerance``: a NaN or infinity makes the sum non-finite."""
    try:
        return not logprobs or (math.isfinite(sum(logprobs)) and max(logprobs) <= tolerance)
    except TypeError:  # not numbers
        return False


_TOKEN_FIELDS = ("prompt_token_ids", "response_token_ids")


def _token_problem(ids: Any) -> CallProblem | None:
    """Why ``ids`` is no list of ints in [0, 2**32), or ``None`` if it is one."""
    try:
        array("I", ids)
    except TypeError:
        return CallProblem.MALFORMED_TOKEN_IDS
    except OverflowError:
        return CallProblem.TOKEN_ID_OUT_OF_RANGE
    return None


def _check_lists(r: Record) -> None:
    """The slow path for a call whose lists are not both valid: name the problem, drop the bad list."""
    for name in _TOKEN_FIELDS:
        ids = r[name]
        if ids is None or ids is _BAD:
            continue
        problem = _token_problem(ids)
        if problem is not None:
            r[name], r["problem"] = None, problem


def _validate(records: Sequence[Record], options: ReconstructOptions) -> None:
    """Check every token id and logprob of the calls kept, and our writer's fingerprint of their
    tokens, setting the problem of each call that fails. A token problem wins over the problems
    already found, and the call's unusable lists become ``None``, so nothing downstream
    (alignment, drift decoding) ever reads them.

    One C pass per call: ``array("I", ...)`` refuses anything but ints in [0, 2**32), BLAKE2
    hashes the array in place, and one vectorised maximum over the whole rollout then bounds
    every id by the vocabulary."""
    tolerance, vocab = options.logprob_tolerance, options.vocab_size
    arrays: list[array[int]] = []
    owners: list[Record] = []
    for r in records:
        prompt, response = r["prompt_token_ids"], r["response_token_ids"]
        if prompt is None or prompt is _BAD or response is None or response is _BAD:
            _check_lists(r)
            continue
        try:
            ids = array("I", prompt)
            ids.extend(response)
        except (TypeError, OverflowError):
            _check_lists(r)
            continue
        arrays.append(ids)
        owners.append(r)
        if r["problem"] is None and not _logprobs_ok(r["logprobs"], tolerance):
            r["problem"] = CallProblem.BAD_LOGPROBS
    if vocab is not None and arrays and int(np.frombuffer(b"".join(arrays), dtype=np.uint32).max()) >= vocab:
        for r, ids in zip(owners, arrays, strict=True):
            if max(ids) >= vocab:
                r["prompt_token_ids"] = r["response_token_ids"] = None
                r["problem"] = CallProblem.TOKEN_ID_OUT_OF_RANGE
    for r, ids in zip(owners, arrays, strict=True):
        fingerprint = r["attributes"].get(AGL_SEQUENCE_FINGERPRINT)
        if fingerprint is None or r["prompt_token_ids"] is None:
            continue
        if blake2b(ids, digest_size=16).hexdigest() != fingerprint:
            # Not the tokens our endpoint sampled and hashed: changed since, or mixed up.
            r["prompt_token_ids"] = r["response_token_ids"] = None
            r["problem"] = CallProblem.FINGERPRINT_MISMATCH


# --- rewards -----------------------------------------------------------------------------------

_REWARD_VALUE0 = f"{S.REWARD_PREFIX}.0.value"
_REWARD_NAME0 = f"{S.REWARD_PREFIX}.0.name"
_REWARD_KEYS = tuple((f"{S.REWARD_PREFIX}.{i}.value", f"{S.REWARD_PREFIX}.{i}.name") for i in range(16))
"""Keys of the first dimensions, formatted once (more are formatted on demand)."""
_N_REWARD_KEYS = len(_REWARD_KEYS)
_LEGACY_REWARD_KEYS = ("agentops.task.output", "agentops.entity.output", "reward")


def _reward_keys(i: int) -> tuple[str, str]:
    if i < len(_REWARD_KEYS):
        return _REWARD_KEYS[i]
    return (f"{S.REWARD_PREFIX}.{i}.value", f"{S.REWARD_PREFIX}.{i}.name")


_ReadReward = tuple[float, dict[str, float], RewardProblem | None]


def _reward_value(value: Any, max_abs: float) -> tuple[float, RewardProblem | None]:
    """A primary reward value as a float, or NaN and why it cannot be trained on."""
    if value is None:
        return _NAN, RewardProblem.MISSING_VALUE
    if type(value) is bool or not isinstance(value, (int, float)):
        return _NAN, RewardProblem.NOT_A_NUMBER
    if isinstance(value, int) and abs(value) > max_abs:  # float() of a huge int overflows
        return _NAN, RewardProblem.OUT_OF_RANGE
    number = float(value)
    if not math.isfinite(number):
        return _NAN, RewardProblem.NOT_FINITE
    if abs(number) > max_abs:
        return _NAN, RewardProblem.OUT_OF_RANGE
    return number, None


def _dimensions(attrs: Mapping[str, Any], name: Any, value: float) -> dict[str, float]:
    """Every reward dimension, primary first; it stops at the first that is not a finite number."""
    dims: dict[str, float] = {name if type(name) is str else str(name): value}
    i = 1
    while True:
        value_key, name_key = _REWARD_KEYS[i] if i < _N_REWARD_KEYS else _reward_keys(i)
        v = attrs.get(value_key)
        if type(v) is not float and (type(v) is bool or not isinstance(v, int) or abs(v) > 2**53):
            break
        if not math.isfinite(v):
            break
        dims[str(attrs.get(name_key, i))] = float(v)
        i += 1
    return dims


def _read_reward(span: Span, max_abs: float) -> _ReadReward | None:
    """A reward span's primary value and dimensions, with the problem that makes it unusable
    (value NaN then); ``None`` when the span is no reward (any other annotation)."""
    attrs = span.attributes
    value = attrs.get(_REWARD_VALUE0)
    if type(value) is float and -max_abs <= value <= max_abs:  # the usual case (NaN fails it)
        return value, _dimensions(attrs, attrs.get(_REWARD_NAME0, 0), value), None
    if value is not None or _REWARD_NAME0 in attrs:  # ``emit_reward``'s format, but broken
        number, problem = _reward_value(value, max_abs)
        dims = _dimensions(attrs, attrs.get(_REWARD_NAME0, 0), number) if problem is None else {}
        return number, dims, problem
    if span.name == S.REWARD_SPAN_NAME or any(k in attrs for k in _LEGACY_REWARD_KEYS[:2]):
        # Older payloads (AgentOps ``{"type": "reward"}``, v0.2 annotations): Agent-lightning's
        # own parser, imported here so the hot path and plain imports stay light. It raises
        # pydantic's ValidationError on a malformed ``agentlightning.reward.*`` payload.
        from agentlightning.emitter.reward import get_reward_value

        try:
            legacy = get_reward_value(span)
        except Exception:  # any failure of a foreign parser: the span is unreadable
            return _NAN, {}, RewardProblem.NOT_A_NUMBER
        if legacy is not None:
            number, problem = _reward_value(legacy, max_abs)
            return number, {}, problem
    return None


_NAN = float("nan")


# --- the reconstruction ------------------------------------------------------------------------


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
    """The chosen attempt's spans (``spans`` itself, not a copy, when that is all of them)."""
    if attempt == "all" or not spans:
        return (None, spans)
    if attempt != "latest":
        return (attempt, [s for s in spans if s.attempt_id == attempt])
    first = spans[0].attempt_id
    for s in spans:
        if s.attempt_id != first:
            break
    else:  # the usual case: one attempt
        return (first, spans)
    # Sequence ids grow per rollout across attempts, so the newest attempt holds the largest one.
    newest: dict[str, tuple[int, float]] = {}
    for s in spans:
        key = (s.sequence_id, s.start_time or 0.0)
        prev = newest.get(s.attempt_id)
        if prev is None or key > prev:
            newest[s.attempt_id] = key
    latest = max(newest, key=lambda a: (newest[a], a))
    return (latest, [s for s in spans if s.attempt_id == latest])


def _dedupe(spans: list[Span]) -> dict[str, Span]:
    """Spans by id; a re-export may carry more attributes, so a duplicate keeps the richest copy."""
    by_id = {s.span_id: s for s in spans}
    if len(by_id) < len(spans):
        by_id = {}
        for s in spans:
            prev = by_id.get(s.span_id)
            if prev is None or len(s.attributes) > len(prev.attributes):
                by_id[s.span_id] = s
    return by_id


def _order(r: Record) -> tuple[float, int, str]:
    """Call order: start time (missing last), then sequence id, then span id."""
    start = r["start_time"]
    return (start if start is not None else _INF, r["sequence_id"], r["span_id"])


_INF = float("inf")


def reconstruct(spans: Iterable[Span], options: ReconstructOptions = ReconstructOptions()) -> Reconstruction:
    """The ordered LLM calls and reward events of one rollout's spans (any order, duplicates ok)."""
    all_spans = spans if type(spans) is list else list(spans)  # only read, never modified
    rollout_id = all_spans[0].rollout_id if all_spans else None
    for s in all_spans:  # a loop, not a set: this runs once per rollout, usually on a few spans
        if s.rollout_id != rollout_id:
            rollout_ids = sorted({x.rollout_id for x in all_spans})
            raise ValueError(f"spans of several rollouts given to reconstruct(): {rollout_ids}")
    attempt_id, chosen = _select_attempt(all_spans, options.attempt)
    by_id = _dedupe(chosen)

    names = options.llm_span_names
    records: list[Record] = []
    orphans: list[tuple[Record, str]] = []  # calls naming no agent, under a parent span
    reward_items: list[tuple[float, int, str, float | None, float, dict[str, float], Any]] = []
    max_abs = options.max_abs_reward
    has_raw = False
    for s in by_id.values():
        if s.name in names or PROMPT_TOKEN_IDS in s.attributes:
            r = _read_llm_span(s)
            records.append(r)
            if r["source"] == "llm_proxy_raw":
                has_raw = True
            if r["agent_name"] is None and s.parent_id is not None:
                orphans.append((r, s.parent_id))
            continue
        reward = _read_reward(s, max_abs)
        if reward is not None:
            t = s.start_time if s.start_time is not None else s.end_time
            reward_items.append((t if t is not None else _INF, s.sequence_id, s.span_id, t, *reward))
    records, merged = _merge_calls(records, by_id, has_raw)

    agent_re = re.compile(options.agent_match) if options.agent_match is not None else None
    model_re = re.compile(options.model_match) if options.model_match is not None else None
    if orphans:  # whatever other spans there are: a call's agent may be named on a parent call
        memo: dict[str, str | None] = {}
        for r, parent_id in orphans:  # merged-away records too: harmless, they are dropped below
            if r["agent_name"] is None:
                r["agent_name"] = _agent_of(parent_id, by_id, memo)
    kept = records
    filtered_ends: frozenset[int] = frozenset()
    if agent_re is not None or model_re is not None:
        kept = [r for r in records if _wanted(r, agent_re, model_re)]
        filtered_ends = frozenset(_end(r) for r in records if not _wanted(r, agent_re, model_re))
    if len(kept) > 1:
        kept.sort(key=_order)
    _validate(kept, options)

    metrics: dict[str, int] = {
        "spans": len(all_spans),
        "other_attempt_spans": len(all_spans) - len(chosen),
        "duplicate_spans": len(chosen) - len(by_id),
        "merged_spans": merged,
        "filtered_calls": len(records) - len(kept),
    }
    calls: list[LLMCall] = []
    parse_failures = 0
    for i, r in enumerate(kept):
        r["index"] = i
        failures = r["attributes"].get(S.AGL_TOOL_CALL_PARSE_FAILURES)
        if failures is not None and type(failures) is int and failures > 0:
            parse_failures += failures
        problem = r["problem"]
        if problem is not None:
            key = f"problem/{problem}"
            metrics[key] = metrics.get(key, 0) + 1
            for name in ("prompt_token_ids", "response_token_ids", "logprobs"):
                if r[name] is _BAD:  # a trainable call has no malformed values
                    r[name] = None
        call = _new(LLMCall)  # construct(LLMCall, r), inlined: this loop runs once per call
        _set(call, "__dict__", r)
        calls.append(call)
    metrics["calls"] = len(calls)
    metrics["tool_call_parse_failures"] = parse_failures

    rewards: list[RewardEvent] = []
    if reward_items:
        if len(reward_items) > 1:
            reward_items.sort(key=lambda item: item[:3])
        starts = [c.start_time if c.start_time is not None else _INF for c in calls]
        for _, seq, sid, t, value, dims, problem in reward_items:
            after = _call_before(calls, starts, t, seq)
            event = {
                "value": value,
                "time": t,
                "sequence_id": seq,
                "span_id": sid,
                "after_call": after,
                "dimensions": dims,
                "problem": problem,
            }
            rewards.append(construct(RewardEvent, event))
            if problem is not None:
                key = f"reward_problem/{problem}"
                metrics[key] = metrics.get(key, 0) + 1
    metrics["rewards"] = len(rewards)
    return construct(
        Reconstruction,
        {
            "rollout_id": rollout_id,
            "attempt_id": attempt_id,
            "calls": tuple(calls),
            "rewards": tuple(rewards),
            "metrics": metrics,
            "filtered_ends": filtered_ends,
        },
    )


def _end(r: Record) -> int:
    """Where a call's tokens end (-1 when it has none to continue from)."""
    prompt, response = r["prompt_token_ids"], r["response_token_ids"]
    if isinstance(prompt, (list, tuple)) and isinstance(response, (list, tuple)):
        return len(prompt) + len(response)
    return -1


def _wanted(r: Record, agent_re: re.Pattern[str] | None, model_re: re.Pattern[str] | None) -> bool:
    if agent_re is not None and (r["agent_name"] is None or agent_re.search(r["agent_name"]) is None):
        return False
    return model_re is None or (r["model"] is not None and model_re.search(r["model"]) is not None)


def _call_before(calls: Sequence[LLMCall], starts: Sequence[float], t: float | None, seq: int) -> int | None:
    """The last call that ended at or before ``t`` (by sequence id when times are missing)."""
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
