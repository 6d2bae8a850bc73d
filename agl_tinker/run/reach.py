"""Network checks with a deadline: preflight never waits in silence.

A misconfigured URL (nothing listening, or a server that accepts and never answers) must fail
within seconds, in one line naming the URL and what to check, not after the SDK's minutes of
retries. :func:`probe` answers whether an HTTP server answers at all; :func:`within` bounds any
blocking call (the SDK's own) by the time left.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TypeVar

from agl_tinker.backend_error import BackendError

__all__ = ["PREFLIGHT_DEADLINE_S", "Deadline", "Unreachable", "check_store", "probe", "within"]

T = TypeVar("T")

PREFLIGHT_DEADLINE_S = 5.0
"""All of a preflight's network checks together, in seconds."""


class Unreachable(BackendError):
    """A URL the run needs did not answer in time; the message names it and what to check."""


class Deadline:
    """A point in time that several checks share."""

    def __init__(self, seconds: float = PREFLIGHT_DEADLINE_S) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left, never below a small floor (a check always gets a moment to answer)."""
        return max(0.05, self._end - time.monotonic())


def probe(url: str, deadline: Deadline, *, what: str, hint: str, path: str = "/") -> None:
    """Raise :class:`Unreachable` unless an HTTP server at ``url`` answers ``GET path`` (any status)
    before ``deadline``. ``what`` names the service, ``hint`` what to check."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unreachable(f"{what} URL {url!r} is not an http(s) URL; {hint}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname, port, timeout=deadline.left())
    target = parts.path.rstrip("/") + path
    try:
        connection.request("GET", target or "/")
        connection.getresponse().read(0)
    except TimeoutError:
        raise Unreachable(f"{what} at {url} did not answer within {deadline.seconds:g} s; {hint}") from None
    except ConnectionRefusedError:
        raise Unreachable(f"{what} at {url} refused the connection (nothing listens there); {hint}") from None
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(f"{what} at {url} cannot be reached ({type(e).__name__}: {e}); {hint}") from None
    finally:
        connection.close()


def within(call: Callable[[], T], deadline: Deadline, *, failure: str) -> T:
    """``call()``, run in a daemon thread, if it returns before ``deadline``; else :class:`Unreachable`
    with ``failure`` (the thread is left to finish on its own: it cannot be stopped from outside).
    An exception ``call`` raises is raised here."""
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # handed over to the waiting thread
            outcome.append((False, e))
        finally:
            done.set()

    threading.Thread(target=run, name="agl-tinker-preflight", daemon=True).start()
    if not done.wait(deadline.left()):
        raise Unreachable(failure)
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def check_store(url: str, deadline: Deadline | None = None) -> None:
    """Split mode: the store server at ``url`` answers its health route, or :class:`Unreachable`."""
    from agentlightning.store.client_server import API_V1_AGL_PREFIX

    probe(
        url.rstrip("/"),
        deadline or Deadline(),
        what="the store",
        hint="start it with `agl-tinker store --port PORT`, or pass its URL with --store",
        path=API_V1_AGL_PREFIX + "/health",
    )
