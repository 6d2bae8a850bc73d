"""How reward events become per-step rewards: a leaf module, so the config imports nothing heavy.

``agl_tinker.core.rewards`` (the pure core) applies it; ``agl_tinker.loop.config`` names it as a setting.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RewardMode"]


class RewardMode(StrEnum):
    FINAL = "final"
    """The last reward emitted is the episode return, credited to the last transition."""
    PER_STEP = "per_step"
    """Each reward is credited to the LLM call before it (earlier ones to the first transition)."""
    SUM = "sum"
    """The sum of all rewards is the return, credited to the last transition."""
