"""Reader of the LLMProxy's raw provider spans (``raw_gen_ai_request``, hosted-vLLM payload keys).

LiteLLM stringifies the provider's request and response (``str(list)``, ``str(dict)``) under
``llm.hosted_vllm.*``; the call's ``litellm_request`` span is their parent (see
:func:`agl_tinker.core.merge.merge_calls`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agl_tinker import spans as S
from agl_tinker.core.readers.draft import CallDraft
from agl_tinker.core.readers.values import literal, logprobs_from_content, token_ids

__all__ = ["HOSTED_PROMPT", "fill_from_hosted_vllm"]

_P = S.HOSTED_VLLM_PREFIX
HOSTED_PROMPT = _P + "prompt_token_ids"
"""Present on raw spans (and on spans re-exported from them): the reader applies to those too."""


def fill_from_hosted_vllm(draft: CallDraft, attrs: Mapping[str, Any]) -> None:
    """Fill what the shared keys left missing from the stringified provider payload.

    Args:
        draft: the call as the shared reader read it.
        attrs: the span's attributes.
    """
    if draft.prompt_token_ids is None:
        draft.prompt_token_ids = token_ids(attrs.get(HOSTED_PROMPT))
    if draft.response_id is None and isinstance(attrs.get(_P + "id"), str):
        draft.response_id = attrs[_P + "id"]
    choices = literal(attrs.get(_P + "choices"))
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    if draft.response_token_ids is None:
        nested = literal(attrs.get(_P + "response_token_ids"))
        if isinstance(nested, list) and nested and isinstance(nested[0], list):
            draft.response_token_ids = token_ids(nested[0])
        elif "token_ids" in choice:
            draft.response_token_ids = token_ids(choice["token_ids"])
    if draft.logprobs is None and isinstance(choice.get("logprobs"), dict):
        draft.logprobs = logprobs_from_content(choice["logprobs"].get("content"))
    if draft.finish_reason is None and isinstance(choice.get("finish_reason"), str):
        draft.finish_reason = choice["finish_reason"]
