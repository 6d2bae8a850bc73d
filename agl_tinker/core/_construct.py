"""Cheap construction of the few objects the core builds per LLM call.

A dataclass ``__init__`` stores fields one by one (``object.__setattr__`` each when frozen) and runs
default factories; a pydantic model validates, which copies the token list (O(history) per call).
Here every value is already of its field's type, so both are skipped: the object gets its
``__dict__`` in one store. Tests check the results equal normally constructed ones, field for field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import pydantic
import tinker

T = TypeVar("T")

_new = object.__new__
_set = object.__setattr__


def construct(cls: type[T], fields: dict[str, Any]) -> T:
    """``cls(**fields)`` for a dataclass (frozen or not, without slots) given every field."""
    obj = _new(cls)
    _set(obj, "__dict__", fields)
    return obj


# BaseModel's own slots, set through their descriptors (what ``model_construct`` does, minus its
# per-field bookkeeping).
_slots = pydantic.BaseModel.__dict__
_set_fields_set = _slots["__pydantic_fields_set__"].__set__
_set_extra = _slots["__pydantic_extra__"].__set__
_set_private = _slots["__pydantic_private__"].__set__
_CHUNK_FIELDS = frozenset({"tokens"})  # as validation leaves it: "type" is a default
_INPUT_FIELDS = frozenset({"chunks"})
_Chunk, _Input = tinker.EncodedTextChunk, tinker.ModelInput


def model_input(tokens: Sequence[int]) -> tinker.ModelInput:
    """``tinker.ModelInput.from_ints(tokens)`` without validation, sharing ``tokens`` (no copy)."""
    chunk = _new(_Chunk)
    _set(chunk, "__dict__", {"tokens": tokens, "type": "encoded_text"})
    _set_fields_set(chunk, set(_CHUNK_FIELDS))
    _set_extra(chunk, None)
    _set_private(chunk, None)
    result = _new(_Input)
    _set(result, "__dict__", {"chunks": [chunk]})
    _set_fields_set(result, set(_INPUT_FIELDS))
    _set_extra(result, None)
    _set_private(result, None)
    return result
