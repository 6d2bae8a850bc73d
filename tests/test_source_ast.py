"""``source_ast.parse_file``: a traceback formatted while a file is parsed (by a finaliser that the
garbage collector runs in the middle of the parse) does not fail the parse, as it fails a plain
``ast.parse`` on CPython 3.11."""

from __future__ import annotations

import ast
import gc
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from source_ast import parse_file

SOURCE = Path(__file__).resolve().parents[1] / "agl_tinker" / "loop" / "config.py"


def _error() -> Exception:
    try:
        return {}["a"]["b"]  # type: ignore[no-any-return]
    except KeyError as error:
        return error


class _LoudFinaliser:
    """Formats a traceback when collected, as a server's unclosed-resource warning does."""

    error = _error()

    def __del__(self) -> None:
        traceback.format_exception(self.error)  # 3.11 places its carets with ast.parse


@pytest.fixture
def collected_while_parsing() -> Iterator[Callable[[], None]]:
    """Leaves a cycle holding a loud finaliser; a low threshold collects it during the next parse."""
    threshold = gc.get_threshold()
    gc.set_threshold(50)

    def leave_garbage() -> None:
        loud = _LoudFinaliser()
        loud.me = loud  # type: ignore[attr-defined]

    try:
        yield leave_garbage
    finally:
        gc.set_threshold(*threshold)


def test_parse_file_survives_a_traceback_formatted_during_the_parse(
    collected_while_parsing: Callable[[], None],
) -> None:
    for _ in range(20):
        collected_while_parsing()
        assert isinstance(parse_file(SOURCE), ast.Module)


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the race is CPython 3.11's")
def test_a_plain_parse_fails_there(collected_while_parsing: Callable[[], None]) -> None:
    """What parse_file guards against, shown on the interpreter that has it."""
    failures = 0
    for _ in range(20):
        collected_while_parsing()
        try:
            ast.parse(SOURCE.read_text())
        except SystemError:
            failures += 1
    assert failures > 0


def test_a_syntax_error_is_raised_as_is(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(SyntaxError):
        parse_file(broken)
