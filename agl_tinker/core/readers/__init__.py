"""One reader per span writer format; :func:`read_call_span` reads any LLM span through them.

- :mod:`.endpoint`: the shared schema (our endpoint; the LLMProxy's ``litellm_request``);
- :mod:`.client`: client-side AgentOps ``openai.chat.completion`` spans;
- :mod:`.llm_proxy`: the LLMProxy's raw provider spans (``raw_gen_ai_request``);
- :mod:`.rewards`: ``emit_reward`` spans and legacy reward payloads.

Each reader fills only what the ones before it left missing, so a span is read the same way
whatever its name says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agl_tinker.core.readers.client import fill_from_client_keys
from agl_tinker.core.readers.draft import CallDraft, problem_of
from agl_tinker.core.readers.endpoint import read_shared_schema
from agl_tinker.core.readers.llm_proxy import HOSTED_PROMPT, fill_from_hosted_vllm
from agl_tinker.core.readers.rewards import ReadReward, read_reward_span

if TYPE_CHECKING:
    from agentlightning.types import Span

__all__ = ["CallDraft", "ReadReward", "read_call_span", "read_reward_span"]


def read_call_span(span: Span) -> CallDraft:
    """One LLM span as a call draft, its problem (before token validation) decided.

    Args:
        span: a span named as an LLM call, or carrying ``prompt_token_ids``.

    Returns:
        The draft; malformed values are kept as :data:`~.values.MALFORMED` and named by ``problem``.
    """
    draft = read_shared_schema(span)
    attrs = span.attributes
    fill_from_client_keys(draft, attrs)
    if draft.source == "llm_proxy_raw" or (draft.prompt_token_ids is None and HOSTED_PROMPT in attrs):
        fill_from_hosted_vllm(draft, attrs)
    draft.problem = problem_of(draft)
    return draft
