"""Local networking helpers shared by the endpoint and the loop."""

from __future__ import annotations

import socket

__all__ = ["SPLIT_STORE_PORT", "free_port"]

SPLIT_STORE_PORT = 4747  # ok: split mode's documented default, not a port any run binds unasked
"""Split mode's store port when none is given: Agent-lightning's (``agl store``, and its strategies
without ``AGL_SERVER_PORT``), so its store and ours pair with either runner command."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` right now (nothing binds a fixed port).

    The port is released before returning, so another process may take it before the caller
    binds it; callers that must not race bind port 0 themselves instead.

    Args:
        host: the address the caller will bind (``127.0.0.1`` unless told otherwise).

    Returns:
        The port number.
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
