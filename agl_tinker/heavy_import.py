"""Import Agent-lightning once per process with the cyclic garbage collector out of the way.

``import agentlightning`` builds close to a million objects (its ``__init__`` pulls in LiteLLM's proxy
server and AgentOps). While they are being built, the collector keeps walking the growing heap: about a
quarter of the import's time goes to collections that find little garbage. Afterwards, every full
collection walks them again, and so does the last one at interpreter exit (seconds under load, after a
command has already printed its result). Freezing them moves them out of the collector's view for good:
they live as long as the process anyway, and forked runner processes stop touching (copying) their pages.

A long-running server does the same with what it was built from (:func:`freeze_survivors`): the endpoint
freezes the process's objects as it starts, so the collections its calls start never walk them.
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
    freeze_survivors()


def freeze_survivors() -> None:
    """Collect once, then freeze every object still alive, out of the cyclic collector's view.

    The endpoint calls it as it starts: what it was built from (imports done after Agent-lightning's,
    the tokenizer, the renderer, the store) lives as long as it serves. Unfrozen, those objects are
    walked by every full collection, the first of which comes within the first calls served (start-up's
    own objects count towards it) and the next ones as the spans an in-process store keeps pile up
    (about 20 tracked objects a call, a quarter of the collected heap between two): 1.3 s with the
    whole process paused on the development machine (920k objects), which read as 2-7 ms of server
    CPU per call in the 1-client window of ``benchmarks/endpoint.py`` it landed in. Frozen, a full
    collection walks only what was built since (the kept spans), and the first is paid here.

    Garbage is collected first, so nothing is kept that a collection would free; an object alive now
    that later becomes cyclic garbage stays (frozen) until ``gc.unfreeze()``, one freed by reference
    counting is freed as always.
    """
    gc.collect()
    gc.freeze()
