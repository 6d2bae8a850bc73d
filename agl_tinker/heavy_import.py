"""Import Agent-lightning once per process with the cyclic garbage collector out of the way.

``import agentlightning`` builds close to a million objects (its ``__init__`` pulls in LiteLLM's proxy
server and AgentOps). While they are being built, the collector keeps walking the growing heap: about a
quarter of the import's time goes to collections that find little garbage. Afterwards, every full
collection walks them again, and so does the last one at interpreter exit (seconds under load, after a
command has already printed its result). Freezing them moves them out of the collector's view for good:
they live as long as the process anyway, and forked runner processes stop touching (copying) their pages.
"""

from __future__ import annotations

import gc
import importlib
import sys


def import_agentlightning() -> None:
    """Import ``agentlightning`` as :func:`import_frozen` does; the ``agl-tinker`` commands call it first."""
    import_frozen("agentlightning")


def import_frozen(name: str) -> None:
    """Import module ``name`` with collections paused, collect once, then freeze what the import built.

    Args:
        name: a module name, as ``importlib.import_module`` takes it.

    A no-op when it is already imported (by this process or the one it forked from). The collector's
    enabled state is restored, and the import's own cyclic garbage is collected before freezing, so
    nothing is kept that a normal import would have freed.
    """
    if name in sys.modules:
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        importlib.import_module(name)
    finally:
        if was_enabled:
            gc.enable()
    gc.collect()
    gc.freeze()
