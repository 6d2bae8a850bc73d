"""What a request's LiteLLM params say about the rollout attempt it belongs to.

The lean server passes the attempt in LiteLLM's ``metadata`` under :data:`TITO_SCOPE`; behind
Agent-lightning's LLMProxy it arrives as the ``x-rollout-id``/``x-attempt-id`` headers the proxy's
middleware adds to that ``metadata``. Token-in-token-out reuse and LLMProxy's span logger read it here.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

TITO_SCOPE = "agl_tinker_tito_scope"
"""LiteLLM ``metadata`` key under which the lean server passes a request's rollout attempt."""


def tito_scope(litellm_params: Mapping[str, Any] | None) -> str | None:
    """The rollout attempt a request belongs to, for scoping token-in-token-out.

    Args:
        litellm_params: the ``litellm_params`` LiteLLM hands a provider or callback (may be ``None``).

    Returns:
        The :data:`TITO_SCOPE` metadata value if set, else ``"{rollout_id}/{attempt_id}"`` from
        LLMProxy's headers, else ``None`` (unknown).
    """
    metadata = (litellm_params or {}).get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return None
    scope = metadata.get(TITO_SCOPE)
    if scope is not None:
        return str(scope)
    headers = llmproxy_rollout_headers(litellm_params)
    if headers.get("x-rollout-id") and headers.get("x-attempt-id"):
        return f"{headers['x-rollout-id']}/{headers['x-attempt-id']}"
    return None


def llmproxy_rollout_headers(litellm_params: Mapping[str, Any] | None) -> dict[str, str]:
    """The request headers carrying ``x-rollout-id`` that LLMProxy's middleware put in ``metadata``.

    Args:
        litellm_params: the ``litellm_params`` LiteLLM hands a provider or callback (may be ``None``).

    Returns:
        The headers, names lower-cased, from ``metadata["requester_custom_headers"]`` or
        ``metadata["headers"]`` (a dict, or its ``repr`` string); ``{}`` when neither has them.
    """
    metadata = (litellm_params or {}).get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return {}
    for key in ("requester_custom_headers", "headers"):
        headers = metadata.get(key)
        if isinstance(headers, str):
            try:
                headers = ast.literal_eval(headers)
            except (ValueError, SyntaxError):
                continue
        if isinstance(headers, Mapping):
            lowered = {str(k).lower(): str(v) for k, v in headers.items()}
            if "x-rollout-id" in lowered:
                return lowered
    return {}
