"""Token-level validation: the one place the core checks token ids, logprobs and fingerprints.

Every token id of every kept call is checked (a list of ints in ``[0, 2**32)``, then below the
vocabulary size), every logprob is a finite number not above 0 (within a tolerance), and our
endpoint's fingerprint (BLAKE2 of the call's prompt + response ids, see
:func:`agl_tinker.spans.token_fingerprint`) must match the recorded tokens. A call failing any of
these gets the problem, and its token lists become ``None``, so nothing downstream (alignment,
drift decoding) ever reads them.

Prompts repeat the conversation so far, so checking every call's whole prompt costs O(history)
per call. Instead a call whose prompt starts, token for token (Python ``==`` on the lists), with
an already checked call's prompt + response is checked only past that prefix: its new ids are
converted and bounded, and its fingerprint is the checked call's BLAKE2 state continued over
them. The call records that prefix (``CallDraft.prefix_call``), which alignment then takes as
confirmed instead of comparing the same tokens again. A call continuing nothing checked is
checked whole.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from agl_tinker.core.readers.draft import CallDraft
from agl_tinker.core.readers.values import MALFORMED
from agl_tinker.core.types import CallProblem, ReconstructOptions
from agl_tinker.spans import AGL_PREFIX_LENGTH, AGL_SEQUENCE_FINGERPRINT

__all__ = ["starts_with", "validate_calls"]


def starts_with(prompt: Sequence[int], head: Sequence[int], tail: Sequence[int]) -> bool:
    """``prompt`` starts with ``head + tail``: cheap end checks first, then an exact comparison."""
    n, m = len(head), len(tail)
    if len(prompt) < n + m:
        return False
    if m and prompt[n + m - 1] != tail[-1]:
        return False
    if n and prompt[n - 1] != head[-1]:
        return False
    return _same(prompt[n : n + m], tail) and _same(prompt[:n], head)


def _same(a: Sequence[int], b: Sequence[int]) -> bool:
    if type(a) is type(b):
        return a == b
    return list(a) == list(b)


@dataclass(slots=True)
class _Checked:
    """A call whose prompt and response ids passed, and the BLAKE2 state over them."""

    position: int
    prompt: Sequence[int]
    response: Sequence[int]
    hasher: blake2b
    end: int
    """``len(prompt) + len(response)``: where a call continuing this one starts its new tokens."""


def _logprobs_ok(logprobs: Any, tolerance: float) -> bool:
    """Finite numbers, none above ``tolerance``: a NaN or infinity makes the sum non-finite."""
    try:
        return not logprobs or (math.isfinite(sum(logprobs)) and max(logprobs) <= tolerance)
    except TypeError:  # not numbers
        return False


def _token_problem(ids: Any) -> CallProblem | None:
    """Why ``ids`` is no list of ints in [0, 2**32), or ``None`` if it is one."""
    try:
        array("I", ids)
    except TypeError:
        return CallProblem.MALFORMED_TOKEN_IDS
    except OverflowError:
        return CallProblem.TOKEN_ID_OUT_OF_RANGE
    return None


def _name_list_problems(draft: CallDraft) -> None:
    """For a call whose lists are not both valid: name the problem, drop the bad list."""
    problem = _token_problem(draft.prompt_token_ids) if _present(draft.prompt_token_ids) else None
    if problem is not None:
        draft.prompt_token_ids, draft.problem = None, problem
    problem = _token_problem(draft.response_token_ids) if _present(draft.response_token_ids) else None
    if problem is not None:
        draft.response_token_ids, draft.problem = None, problem


def _present(ids: Any) -> bool:
    return ids is not None and ids is not MALFORMED


def _checked_prefix(
    draft: CallDraft, prompt: Sequence[int], by_end: dict[int, _Checked], last: _Checked | None
) -> _Checked | None:
    """The checked call whose prompt + response ``prompt`` starts with: the latest one ending
    where the writer claims the prefix ends, else the previous checked call; ``None`` if the
    tokens confirm neither."""
    claimed = draft.attributes.get(AGL_PREFIX_LENGTH)
    base = by_end.get(claimed) if type(claimed) is int else last
    if base is not None and starts_with(prompt, base.prompt, base.response):
        return base
    return None


def _new_ids(head: Sequence[int], response: Sequence[int]) -> array[int] | None:
    """``head + response`` as one ``uint32`` array, or ``None`` if an id is no such int."""
    try:
        ids = array("I", head)
        ids.extend(response)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        return None
    return ids


def _below(vocab: int, head: Sequence[int], response: Sequence[int]) -> bool:
    """Every id of ``head`` and ``response`` is below ``vocab``. Taken on the lists (already
    checked to be ints): ``max`` over the array boxes every item again, which was slower."""
    return (not head or max(head) < vocab) and (not response or max(response) < vocab)


def validate_calls(drafts: Sequence[CallDraft], options: ReconstructOptions) -> None:
    """Check the kept calls' tokens, logprobs and fingerprints, setting each failing call's problem.

    A token problem wins over the problems already found. A call found to continue an earlier
    checked call gets ``prefix_call`` set to that call's position in ``drafts``.

    Args:
        drafts: the calls kept (after merging and filtering), in call order.
        options: ``vocab_size`` and ``logprob_tolerance`` are read.
    """
    vocab = options.vocab_size
    by_end: dict[int, _Checked] = {}  # the latest trainable-token call ending at each length
    last: _Checked | None = None
    for position, draft in enumerate(drafts):
        prompt, response = draft.prompt_token_ids, draft.response_token_ids
        if not (
            isinstance(prompt, (list, tuple)) and isinstance(response, (list, tuple))
        ):  # as readers give them
            _name_list_problems(draft)
            continue
        base = _checked_prefix(draft, prompt, by_end, last)
        head = prompt[base.end :] if base is not None else prompt  # the ids not checked yet
        ids = _new_ids(head, response)
        if ids is None:
            _name_list_problems(draft)
            continue
        if vocab is not None and not _below(vocab, head, response):
            draft.prompt_token_ids = draft.response_token_ids = None
            draft.problem = CallProblem.TOKEN_ID_OUT_OF_RANGE
            continue
        hasher = base.hasher.copy() if base is not None else blake2b(digest_size=16)
        hasher.update(ids)
        fingerprint = draft.attributes.get(AGL_SEQUENCE_FINGERPRINT)
        if fingerprint is not None and hasher.hexdigest() != fingerprint:
            # Not the tokens our endpoint sampled and hashed: changed since, or mixed up.
            draft.prompt_token_ids = draft.response_token_ids = None
            draft.problem = CallProblem.FINGERPRINT_MISMATCH
            continue
        if draft.problem is None and not _logprobs_ok(draft.logprobs, options.logprob_tolerance):
            draft.problem = CallProblem.BAD_LOGPROBS
        draft.prefix_call = base.position if base is not None else None
        end = len(prompt) + len(response)
        last = by_end[end] = _Checked(position, prompt, response, hasher, end)
