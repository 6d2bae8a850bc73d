"""Reader of client-side spans (AgentOps' ``openai.chat.completion``, as Agent-lightning's tracer writes).

They carry no sampled logprobs in the shared key; the OpenAI response's ``logprobs.content`` list
stands in. Token ids come from the shared keys when the agent's client asked for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agl_tinker import spans as S
from agl_tinker.core.readers.draft import CallDraft
from agl_tinker.core.readers.values import literal, logprobs_from_content

__all__ = ["fill_from_client_keys"]


def fill_from_client_keys(draft: CallDraft, attrs: Mapping[str, Any]) -> None:
    """Take the logprobs from ``logprobs.content`` when the shared key held none.

    Args:
        draft: the call as :func:`~agl_tinker.core.readers.endpoint.read_shared_schema` read it.
        attrs: the span's attributes.
    """
    if draft.logprobs is None and S.CLIENT_LOGPROBS in attrs:
        draft.logprobs = logprobs_from_content(literal(attrs[S.CLIENT_LOGPROBS]))
