"""A benchmark's stdout is its one JSON line: banners, progress lines and logs go to stderr.

``with json_stdout(): main()`` points file descriptor 1 at stderr for everything inside (this
process, its threads and the processes it starts, C code included), and :func:`emit_json`
writes to the real stdout. Outside the block ``emit_json`` is a plain ``print``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

_real_stdout: int | None = None


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    global _real_stdout
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _real_stdout = saved
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        _real_stdout = None


def emit_json(result: Any) -> None:
    """Write ``result`` as one JSON line to the real stdout."""
    line = json.dumps(result) + "\n"
    if _real_stdout is None:
        sys.stdout.write(line)
        sys.stdout.flush()
    else:
        os.write(_real_stdout, line.encode())
