"""What alignment produces: steps (one per trained call), token sequences, gaps, and its options.

Steps, sequences and the alignment are slots dataclasses, read-only by convention; options and
gaps are frozen (see :mod:`agl_tinker.core.types` for why).

A step's ``ob`` is the call's full prompt and its ``ac`` the sampled tokens with their logprobs;
within a sequence each step's ``ob`` extends the previous step's ``ob`` + ``ac``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import tinker
from tinker_cookbook.completers import TokensWithLogprobs

from agl_tinker.core.drift import DriftEvent

__all__ = ["AlignOptions", "AlignedStep", "Alignment", "Gap", "TokenSequence"]


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
class Gap:
    """A call whose writer vouches for a prompt prefix no recorded call of the rollout ended at:
    the span of the call that produced those tokens was lost. Without this, the lost call's
    sampled tokens would silently become observations of the next one."""

    call_index: int
    claimed_prefix_length: int
    """The writer's ``agl_tinker.prefix_length``."""


@dataclass(slots=True)
class TokenSequence:
    index: int
    call_indices: tuple[int, ...]
    observation_tokens: int
    action_tokens: int

    @property
    def length(self) -> int:
        return self.observation_tokens + self.action_tokens


@dataclass(slots=True)
class AlignedStep:
    """One trained call: its prompt as the observation, its sampled tokens as the action."""

    call_index: int
    sequence_index: int
    ob: tinker.ModelInput
    """The call's full prompt: it extends the previous step's ob + ac within a sequence."""
    ac: TokensWithLogprobs
    observation_tokens: int
    """Prompt tokens this step adds to its sequence (masked in the datum)."""
    sampled_sequence_id: str | None = None
    """The call's recorded ``sequence_id`` (:attr:`LLMCall.sampled_sequence_id`), if any."""


@dataclass(slots=True)
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
        return tuple(step.call_index for step in self.steps)
