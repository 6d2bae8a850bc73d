"""Moved to :mod:`agl_tinker.algorithm` (the Agent-lightning side sits above the loop).

Earlier READMEs told users to import ``fit`` and ``fast_runner`` from here, so the names stay
importable: each resolves on first use to the same object in its new home, with a
``DeprecationWarning`` naming it. New code imports from :mod:`agl_tinker.algorithm`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "LeanServerStrategy": "agl_tinker.algorithm",
    "TinkerAlgorithm": "agl_tinker.algorithm",
    "check_runner": "agl_tinker.algorithm",
    "fast_runner": "agl_tinker.algorithm",
    "fit": "agl_tinker.algorithm",
    "interrupt_watch": "agl_tinker.algorithm",
    "store_launcher_args": "agl_tinker.algorithm",
    "wait_for_store": "agl_tinker.runners.store_wait",
}
"""Old name -> the module that defines it now."""

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    """The moved name from its new module (PEP 562), with a warning that names the new import."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"agl_tinker.loop.algo.{name} moved: import it from {module}", DeprecationWarning, stacklevel=2
    )
    return getattr(importlib.import_module(module), name)
