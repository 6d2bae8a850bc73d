"""Returning freed memory to the OS, so a long-running server shrinks after its sessions end."""

from __future__ import annotations

import ctypes
import functools

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
LARGE_BLOCK_BYTES = 1 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to do
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def return_free_memory() -> None:
    """glibc keeps memory freed in its per-thread arenas (each training run computes on its own
    thread); ``malloc_trim`` gives it back, so a server that ran through many sessions shrinks
    back to what its live sessions hold."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def map_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Serve every allocation of ``threshold`` bytes or more from its own mapping, returned to the
    OS when freed; True if set (glibc only).

    glibc's threshold is dynamic: freeing a mapped block raises it to that block's size (up to
    32 MiB), after which a training run's parameter, gradient and optimizer tensors come from
    the heap arenas, where small long-lived objects allocated between them pin the pages once
    the session ends; ``malloc_trim`` cannot return those. Process-wide: the foreground
    ``sim-server`` sets it for its own process (measured in ``benchmarks/wire.py --soak``)."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
