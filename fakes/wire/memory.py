"""Returning freed memory to the OS, so a long-running server shrinks after its sessions end."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def return_free_memory() -> None:
    """glibc keeps memory freed in its per-thread arenas (each training run computes on its own
    thread); ``malloc_trim`` gives it back, so a server that ran through many sessions shrinks
    back to what its live sessions hold."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
