"""Token-level validation: the one place the core checks token ids, logprobs and fingerprints.

Every token id of every kept call is checked (a list of ints in ``[0, 2**32)``, then below the
vocabulary size), every logprob is a finite number not above 0 (within a tolerance), and our
endpoint's fingerprint (BLAKE2 of the call's prompt + response ids, see
:func:`agl_tinker.spans.token_fingerprint`) must match the recorded tokens. A call failing any of
these gets the problem, and its token lists become ``None``, so nothing downstream (alignment,
drift decoding) ever reads them.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from hashlib import blake2b
from typing import Any

import numpy as np

from agl_tinker.core.readers.draft import CallDraft
from agl_tinker.core.readers.values import MALFORMED
from agl_tinker.core.types import CallProblem, ReconstructOptions
from agl_tinker.spans import AGL_SEQUENCE_FINGERPRINT

__all__ = ["validate_calls"]


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


def _all_ids(draft: CallDraft) -> array[int] | None:
    """The call's prompt + response ids as one ``uint32`` array, or ``None`` if either is unusable."""
    prompt, response = draft.prompt_token_ids, draft.response_token_ids
    if not (_present(prompt) and _present(response)):
        return None
    try:
        ids = array("I", prompt)  # type: ignore[arg-type]
        ids.extend(response)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        return None
    return ids


def validate_calls(drafts: Sequence[CallDraft], options: ReconstructOptions) -> None:
    """Check the kept calls' tokens, logprobs and fingerprints, setting each failing call's problem.

    A token problem wins over the problems already found. One C pass per call: ``array("I", ...)``
    refuses anything but ints in [0, 2**32), BLAKE2 hashes the array in place, and one vectorised
    maximum over the whole rollout bounds every id by the vocabulary.

    Args:
        drafts: the calls kept (after merging and filtering).
        options: ``vocab_size`` and ``logprob_tolerance`` are read.
    """
    checked: list[tuple[CallDraft, array[int]]] = []
    for draft in drafts:
        ids = _all_ids(draft)
        if ids is None:
            _name_list_problems(draft)
            continue
        checked.append((draft, ids))
        if draft.problem is None and not _logprobs_ok(draft.logprobs, options.logprob_tolerance):
            draft.problem = CallProblem.BAD_LOGPROBS
    vocab = options.vocab_size
    if vocab is not None and checked:
        everything = np.frombuffer(b"".join([ids for _, ids in checked]), dtype=np.uint32)
        if everything.size and int(everything.max()) >= vocab:
            for draft, ids in checked:
                if max(ids) >= vocab:
                    draft.prompt_token_ids = draft.response_token_ids = None
                    draft.problem = CallProblem.TOKEN_ID_OUT_OF_RANGE
    for draft, ids in checked:
        fingerprint = draft.attributes.get(AGL_SEQUENCE_FINGERPRINT)
        if fingerprint is None or draft.prompt_token_ids is None:
            continue
        if blake2b(ids, digest_size=16).hexdigest() != fingerprint:
            # Not the tokens our endpoint sampled and hashed: changed since, or mixed up.
            draft.prompt_token_ids = draft.response_token_ids = None
            draft.problem = CallProblem.FINGERPRINT_MISMATCH
