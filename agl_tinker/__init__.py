"""agl-tinker: train ordinary OpenAI-client agents with RL on Tinker through Agent-lightning traces.

The public names a training script needs are importable from here::

    from agl_tinker import LeanServerStrategy, TinkerAlgorithm, TrainConfig, fast_runner, load_tasks

They load on first use, so ``import agl_tinker`` stays cheap and can run before ``agentlightning``
(it tells LiteLLM to use its bundled model-cost map instead of fetching one, which stalls offline).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# LiteLLM fetches a remote model-cost map at import unless told otherwise; offline that stalls seconds.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _require_agentlightning_0_3() -> None:
    """Agent-lightning 1.x is another product under the same distribution name, none of whose APIs
    this package uses: next to it every import would fail deep inside; say so in one line instead."""
    from importlib import metadata

    try:
        found = metadata.version("agentlightning")
    except metadata.PackageNotFoundError:
        return  # the import that needs it reports it
    if not found.startswith("0."):
        raise ImportError(
            f"agl-tinker needs Agent-lightning 0.3.0, but agentlightning {found} is installed (1.x is a different "
            "product under the same name); install agl-tinker in its own virtual environment (pip would "
            "replace 1.x there with 0.3.0)"
        )


_require_agentlightning_0_3()

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "TinkerAlgorithm": "agl_tinker.algorithm",
    "LeanServerStrategy": "agl_tinker.algorithm",
    "fast_runner": "agl_tinker.algorithm",
    "TrainConfig": "agl_tinker.loop.config",
    "PolicyConfig": "agl_tinker.loop.config",
    "load_tasks": "agl_tinker.loop.data",
    "EndpointConfig": "agl_tinker.endpoint.start",
}

__all__ = [
    "EndpointConfig",
    "LeanServerStrategy",
    "PolicyConfig",
    "TinkerAlgorithm",
    "TrainConfig",
    "__version__",
    "fast_runner",
    "load_tasks",
]

if TYPE_CHECKING:
    from agl_tinker.algorithm import LeanServerStrategy, TinkerAlgorithm, fast_runner
    from agl_tinker.endpoint.start import EndpointConfig
    from agl_tinker.loop.config import PolicyConfig, TrainConfig
    from agl_tinker.loop.data import load_tasks


# the public modules that import Agent-lightning: it is imported first, through heavy_import
_NEED_AGENTLIGHTNING = frozenset({"agl_tinker.algorithm", "agl_tinker.endpoint.start"})


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562).

    A module that imports Agent-lightning gets it through :func:`heavy_import.import_agentlightning`
    (collector paused, objects frozen), so a training script starts and exits seconds sooner.
    """
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'agl_tinker' has no attribute {name!r}")
    if module in _NEED_AGENTLIGHTNING:
        from agl_tinker import heavy_import

        heavy_import.import_agentlightning()
    return getattr(importlib.import_module(module), name)
