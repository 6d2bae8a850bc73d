"""Reader of reward spans: ``agl.emit_reward``'s format, and the legacy payloads before it.

``emit_reward`` writes ``agentlightning.reward.<i>.name`` / ``.value`` (primary first). Older
payloads (AgentOps ``{"type": "reward"}`` outputs, v0.2 annotations) are read with
Agent-lightning's own parser. A reward that cannot be trained on is kept with its problem: it
excludes its rollout rather than being read as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agl_tinker import spans as S
from agl_tinker.core.types import RewardProblem

if TYPE_CHECKING:
    from agentlightning.types import Span

__all__ = ["ReadReward", "read_reward_span"]

_LEGACY_KEYS = ("agentops.task.output", "agentops.entity.output")
_NAN = float("nan")


@dataclass(frozen=True)
class ReadReward:
    """A reward span's content, before it is placed among the calls."""

    value: float
    """The primary value; NaN when ``problem`` is set."""
    dimensions: dict[str, float] = field(default_factory=dict)
    """Every dimension, primary first (empty for legacy payloads and unusable rewards)."""
    problem: RewardProblem | None = None


def _value_key(i: int) -> str:
    return f"{S.REWARD_PREFIX}.{i}.value"


def _name_key(i: int) -> str:
    return f"{S.REWARD_PREFIX}.{i}.name"


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
        v = attrs.get(_value_key(i))
        if type(v) is not float and (type(v) is bool or not isinstance(v, int) or abs(v) > 2**53):
            break
        if not math.isfinite(v):
            break
        dims[str(attrs.get(_name_key(i), i))] = float(v)
        i += 1
    return dims


def read_reward_span(span: Span, max_abs: float) -> ReadReward | None:
    """A reward span's primary value and dimensions, with the problem that makes it unusable.

    Args:
        span: any span that is not an LLM call.
        max_abs: rewards of larger magnitude are ``out_of_range``.

    Returns:
        The reward, or ``None`` when the span is no reward (any other annotation).
    """
    attrs = span.attributes
    value = attrs.get(_value_key(0))
    if value is not None or _name_key(0) in attrs:  # ``emit_reward``'s format
        number, problem = _reward_value(value, max_abs)
        dims = _dimensions(attrs, attrs.get(_name_key(0), 0), number) if problem is None else {}
        return ReadReward(number, dims, problem)
    if span.name == S.REWARD_SPAN_NAME or any(k in attrs for k in _LEGACY_KEYS):
        # Agent-lightning's own parser, imported here so plain imports of the core stay light. It
        # raises pydantic's ValidationError on a malformed ``agentlightning.reward.*`` payload.
        from agentlightning.emitter.reward import get_reward_value

        try:
            legacy = get_reward_value(span)
        except Exception:  # any failure of a foreign parser: the span is unreadable
            return ReadReward(_NAN, {}, RewardProblem.NOT_A_NUMBER)
        if legacy is not None:
            number, problem = _reward_value(legacy, max_abs)
            return ReadReward(number, {}, problem)
    return None
