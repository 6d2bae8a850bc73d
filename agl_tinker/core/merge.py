"""Merging the spans of one LLM call into one draft.

One response can be recorded several times: by the agent's client (AgentOps), by the LLMProxy
(``litellm_request``) with its raw provider span as a child, and by our endpoint. Raw spans fold
into their ``litellm_request`` parent first; then drafts sharing a response id fold into the one
of the best source (:data:`~agl_tinker.core.readers.draft.SOURCE_RANK`), which keeps its values
and takes only what it lacks.
"""

from __future__ import annotations

from collections.abc import Mapping

from agl_tinker.core.readers.draft import SOURCE_RANK, CallDraft, merge_draft

__all__ = ["merge_calls"]


def merge_calls(drafts: list[CallDraft], parents: Mapping[str, str | None]) -> tuple[list[CallDraft], int]:
    """The rollout's calls, one draft each.

    Args:
        drafts: one per LLM span.
        parents: parent span id of every span (``None`` for a root).

    Returns:
        The merged drafts, and how many spans were merged into another's draft.
    """
    merged = 0
    if any(d.source == "llm_proxy_raw" for d in drafts):
        by_span = {d.span_id: d for d in drafts}
        for span_id in sorted(by_span, key=lambda k: (SOURCE_RANK[by_span[k].source], k)):
            draft = by_span[span_id]
            parent = by_span.get(parents.get(span_id) or "")
            if draft.source == "llm_proxy_raw" and parent is not None and SOURCE_RANK[parent.source] < 2:
                merge_draft(parent, draft)
                del by_span[span_id]
                merged += 1
        drafts = list(by_span.values())
    if len({d.key for d in drafts}) < len(drafts):
        groups: dict[str, CallDraft] = {}
        for draft in sorted(drafts, key=lambda d: (SOURCE_RANK[d.source], d.sequence_id, d.span_id)):
            head = groups.setdefault(draft.key, draft)
            if head is not draft:
                merge_draft(head, draft)
                merged += 1
        drafts = list(groups.values())
    return drafts, merged
