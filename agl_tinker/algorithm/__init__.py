"""The Agent-lightning side, above the loop: ``TinkerAlgorithm`` (an ``agl.Algorithm`` running
:func:`agl_tinker.loop.train.train`), the runner it needs (``fast_runner``), the execution strategy
(``LeanServerStrategy``) and the one-command :func:`fit`.

Import from here: ``from agl_tinker.algorithm import fit, fast_runner``.
"""

from agl_tinker.algorithm.fit import fit, interrupt_watch
from agl_tinker.algorithm.strategy import LeanServerStrategy, store_launcher_args
from agl_tinker.algorithm.tinker_algorithm import TinkerAlgorithm, check_runner, fast_runner

__all__ = [
    "LeanServerStrategy",
    "TinkerAlgorithm",
    "check_runner",
    "fast_runner",
    "fit",
    "interrupt_watch",
    "store_launcher_args",
]
