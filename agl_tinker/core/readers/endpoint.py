"""Reader of the shared LLM-call schema: what our endpoint writes, and the LLMProxy's ``litellm_request``.

Both writers use the keys of :mod:`agl_tinker.spans` (OpenTelemetry GenAI names plus
``agl_tinker.*``); our endpoint alone adds ``agl_tinker.sequence_fingerprint``, which marks the
span as the best source of its call. Other writers' spans are read with this reader first, then
completed by theirs (:mod:`.client`, :mod:`.llm_proxy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agl_tinker import spans as S
from agl_tinker.core.readers.draft import CallDraft
from agl_tinker.core.readers.values import float_list, literal, token_ids

if TYPE_CHECKING:
    from agentlightning.types import Span

__all__ = ["read_shared_schema"]

_SOURCE_BY_NAME = {
    S.LLM_CALL_SPAN_NAME: "llm_proxy",
    S.RAW_LLM_CALL_SPAN_NAME: "llm_proxy_raw",
    S.CLIENT_LLM_CALL_SPAN_NAME: "client",
}


def read_shared_schema(span: Span) -> CallDraft:
    """The call one LLM span records in the shared keys (values of a wrong type read as absent).

    Args:
        span: a span named as an LLM call, or carrying ``prompt_token_ids``.

    Returns:
        A draft without a problem set: the caller decides it once every reader has run.
    """
    attrs = span.attributes
    get = attrs.get
    source = "agl_tinker" if S.AGL_SEQUENCE_FINGERPRINT in attrs else _SOURCE_BY_NAME.get(span.name, "other")
    response_id = get(S.RESPONSE_ID) or get(S.OPERATION_OUTPUT_ID)
    finish_reason = get(S.COMPLETION_FINISH_REASON)
    if finish_reason is None:
        reasons = literal(get(S.FINISH_REASONS))
        if isinstance(reasons, list) and reasons and isinstance(reasons[0], str):
            finish_reason = reasons[0]
    elif not isinstance(finish_reason, str):
        finish_reason = None
    model = get(S.REQUEST_MODEL) or get(S.RESPONSE_MODEL)
    version = get(S.AGL_WEIGHTS_VERSION)
    if type(version) is bool or not isinstance(version, (int, str)):
        version = None
    agent = get(S.AGL_AGENT_NAME)
    sampled_sequence_id = get(S.AGL_SAMPLED_SEQUENCE_ID)
    return CallDraft(
        span_id=span.span_id,
        span_ids=(span.span_id,),
        response_id=response_id if isinstance(response_id, str) else None,
        prompt_token_ids=token_ids(get(S.PROMPT_TOKEN_IDS)),
        response_token_ids=token_ids(get(S.RESPONSE_TOKEN_IDS)),
        logprobs=float_list(get(S.AGL_RESPONSE_LOGPROBS)),
        finish_reason=finish_reason,
        start_time=span.start_time,
        end_time=span.end_time,
        sequence_id=span.sequence_id,
        model=None if model is None else str(model),
        agent_name=agent if agent is None or isinstance(agent, str) else str(agent),
        weights_version=version,
        source=source,
        attributes=attrs,
        failed=span.status.status_code == "ERROR",
        sampled_sequence_id=sampled_sequence_id
        if isinstance(sampled_sequence_id, str) and sampled_sequence_id
        else None,
    )
