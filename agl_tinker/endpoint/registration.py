"""A provider's entry in LiteLLM's custom-provider map, under a name of its own.

Each provider gets its own LiteLLM provider name so several endpoints can live in one process (the
tests run a lean server and an LLMProxy side by side), and zero pricing so LiteLLM does not search its
cost map for an unknown model on every call.
"""

from __future__ import annotations

import uuid

import litellm
from litellm.llms.custom_llm import CustomLLM

PROVIDER_NAME = "agl_tinker"
"""Prefix of the LiteLLM provider names :func:`register` hands out."""


def register(provider: CustomLLM, served_model: str) -> str:
    """Register ``provider`` with LiteLLM under a fresh provider name.

    Args:
        provider: the handler (a :class:`agl_tinker.endpoint.provider.TinkerChatProvider`).
        served_model: the model name agents ask for.

    Returns:
        The LiteLLM model string, ``"{PROVIDER_NAME}_{suffix}/{served_model}"``; pass it to
        ``litellm.acompletion`` and, at the end, to :func:`unregister`.
    """
    name = f"{PROVIDER_NAME}_{uuid.uuid4().hex[:8]}"
    litellm.custom_provider_map.append({"provider": name, "custom_handler": provider})
    litellm.utils.custom_llm_setup()
    model = f"{name}/{served_model}"
    # Zero pricing: LiteLLM otherwise searches its cost map (and fallbacks) for an unknown model per call.
    litellm.register_model(
        {
            model: {
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
                "cache_creation_input_token_cost": 0.0,  # else LiteLLM warns at every start
                "cache_read_input_token_cost": 0.0,
                "litellm_provider": name,
                "mode": "chat",
            }
        }
    )
    return model


def unregister(model: str) -> None:
    """Forget a provider registered by :func:`register`.

    Args:
        model: the LiteLLM model string :func:`register` returned.
    """
    name = model.split("/", 1)[0]
    litellm.custom_provider_map[:] = [e for e in litellm.custom_provider_map if e.get("provider") != name]
