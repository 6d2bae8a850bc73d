"""The ``agl-tinker`` command line (:func:`main`).

Rooms: ``main`` (parser, dispatch, how errors end), ``settings`` (``key=value`` parsing, built by
chz), ``command`` (what one command builds), ``example_settings`` and ``examples`` (hello, q20),
``running`` (Ctrl-C and resume hints), ``services`` (smoke, store, sim-server).
"""

from agl_tinker.cli.command import Command
from agl_tinker.cli.main import build_parser, main, parse_args
from agl_tinker.cli.running import StepTracker
from agl_tinker.cli.settings import UsageError, split_key_values

__all__ = ["Command", "StepTracker", "UsageError", "build_parser", "main", "parse_args", "split_key_values"]
