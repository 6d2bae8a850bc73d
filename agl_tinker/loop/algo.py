"""Moved to :mod:`agl_tinker.algorithm` (the Agent-lightning side sits above the loop).

This name stays importable because earlier READMEs told users to import ``fit`` and
``fast_runner`` from here; new code imports from :mod:`agl_tinker.algorithm`.
"""

from agl_tinker.algorithm import (
    LeanServerStrategy,
    TinkerAlgorithm,
    check_runner,
    fast_runner,
    fit,
    interrupt_watch,
    store_launcher_args,
)
from agl_tinker.runners.store_wait import wait_for_store

__all__ = [
    "LeanServerStrategy",
    "TinkerAlgorithm",
    "check_runner",
    "fast_runner",
    "fit",
    "interrupt_watch",
    "store_launcher_args",
    "wait_for_store",
]
