"""Reading one attribute value: token ids, float lists and Python-literal strings, as writers store them.

Values arrive as lists (our endpoint, the LLMProxy), JSON or ``str(list)`` strings (raw provider
spans, re-exported traces), or corrupted. Readers report a malformed value as :data:`MALFORMED`
rather than raising, so one bad span costs its call, never the rollout.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from enum import Enum
from typing import Any

__all__ = ["MALFORMED", "Malformed", "float_list", "literal", "logprobs_from_content", "token_ids"]


class Malformed(Enum):
    """The type of :data:`MALFORMED`: a value present but unusable (not a list of numbers)."""

    VALUE = "malformed"


MALFORMED = Malformed.VALUE

_UNREADABLE = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError)
"""What ``json.loads`` / ``ast.literal_eval`` raise on a corrupted value (a set literal of lists
is a ``TypeError``, deep nesting a ``RecursionError``): such a value reads as absent or malformed."""


def literal(value: Any) -> Any:
    """``value`` itself, or, for a string, what it encodes as JSON or as a Python literal.

    Args:
        value: an attribute value.

    Returns:
        The decoded value; ``None`` for a string that is neither.
    """
    if isinstance(value, str):
        try:
            return json.loads(value)
        except _UNREADABLE:
            try:
                return ast.literal_eval(value)
            except _UNREADABLE:
                return None
    return value


def _decoded_list(value: Any) -> list[Any] | tuple[Any, ...] | Malformed | None:
    """A stored value that is not a list, as a list or tuple (decoding a string), ``None`` if
    absent or :data:`MALFORMED` otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        value = literal(value)
    return value if isinstance(value, (list, tuple)) else MALFORMED


def token_ids(value: Any) -> Sequence[int] | Malformed | None:
    """Token ids as stored (no copy: prompts grow with history).

    Only the two ends are spot-checked here; :mod:`agl_tinker.core.validate` checks every id of
    the calls that are kept.

    Args:
        value: an attribute value (list, tuple, string encoding one, or anything else).

    Returns:
        The ids, ``None`` if absent, :data:`MALFORMED` if not a list of ints.
    """
    if type(value) is not list:  # lists are what writers store; the rest is rare
        value = _decoded_list(value)
        if value is None or value is MALFORMED:
            return value
    if value and (type(value[0]) is not int or type(value[-1]) is not int):
        return MALFORMED
    return value


def float_list(value: Any) -> Sequence[float] | Malformed | None:
    """Logprobs as stored, like :func:`token_ids` (ends spot-checked as numbers)."""
    if type(value) is not list:
        value = _decoded_list(value)
        if value is None or value is MALFORMED:
            return value
    if value and not (isinstance(value[0], (float, int)) and isinstance(value[-1], (float, int))):
        return MALFORMED
    return value


def logprobs_from_content(content: Any) -> list[float] | Malformed:
    """Logprobs from an OpenAI ``logprobs.content`` list (``[{"token", "logprob", ...}, ...]``)."""
    if not isinstance(content, list):
        return MALFORMED
    try:
        return [float(item["logprob"]) for item in content]
    except (TypeError, KeyError, ValueError, OverflowError):
        return MALFORMED
