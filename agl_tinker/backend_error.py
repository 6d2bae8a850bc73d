"""The error a misconfigured or unreachable Tinker backend raises (a leaf: nothing to import).

:mod:`agl_tinker.backend` (choosing the service) and :mod:`agl_tinker.run.reach` (network checks
with a deadline) both raise it; the CLI reports it in one line.
"""

from __future__ import annotations

__all__ = ["BackendError"]


class BackendError(RuntimeError):
    """The backend is misconfigured (unknown name, missing credentials) or does not answer."""
