"""``ast.parse`` of a source file, for tests that read the package's own code.

CPython 3.11 builds ``ast`` objects under a recursion counter that the interpreter's threads share,
and its ``traceback`` module calls ``ast.parse`` to place error carets. When a thread left running by
an earlier test (a server logging an exception) formats a traceback at the same moment, ``ast.parse``
here raises ``SystemError: AST constructor recursion depth mismatch``, although the file is fine
(seen in whole-suite runs only). The race leaves nothing behind, so parsing again gives the answer.
"""

from __future__ import annotations

import ast
from pathlib import Path

_TRIES = 5


def parse_file(path: Path) -> ast.Module:
    """The module ``path`` holds; a ``SyntaxError`` or any other ``SystemError`` is raised as is."""
    for attempt in range(_TRIES):
        try:
            return ast.parse(path.read_text(), str(path))
        except SystemError as error:
            if "recursion depth mismatch" not in str(error) or attempt == _TRIES - 1:
                raise
    raise AssertionError("unreachable")
