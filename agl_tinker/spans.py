"""The span attribute schema shared by the endpoint (writer) and the reconstruction (reader).

One chat completion is one span named :data:`LLM_CALL_SPAN_NAME` (``litellm_request``, the per-call
span Agent-lightning's LLMProxy writes) whose attributes :func:`llm_call_attributes` builds. The
schema is the LLMProxy/AgentOps one, so Agent-lightning's own adapters read it unchanged:

=================================  =========================  ==============================================
key                                 type                       meaning
=================================  =========================  ==============================================
``prompt_token_ids``                list[int]                  prompt exactly as sampled (agl instrumented key)
``response_token_ids``              list[int]                  sampled tokens (agl instrumented key)
``gen_ai.response.id``              str                        call id; deduplicates client and proxy spans
``gen_ai.request.model``            str                        model name the agent asked for
``gen_ai.response.model``           str                        model that answered
``gen_ai.prompt.{i}.role|content``  str                        input messages, AgentOps flat format (optional)
``gen_ai.completion.0.role``        str                        ``assistant``
``gen_ai.completion.0.content``     str                        completion text (optional)
``gen_ai.completion.0.finish_reason`` str                      ``stop`` / ``length`` / ``tool_calls``
``agl_tinker.response_logprobs``    list[float]                one logprob per response token (custom: the
                                                               proxy format has none)
``agl_tinker.weights_version``      int | str                  policy version that sampled the call: the save its
                                                               sampling client was created at (an in-flight
                                                               client may have run on that version or newer)
``agl_tinker.sampled_sequence_id``  str                        ``SampledSequence.sequence_id`` of the call's
                                                               sample, written only when its sampling client
                                                               records stability info (the service can then
                                                               train on it by that id, e.g. StableReinforce)
``agl_tinker.agent_name``           str                        agent that made the call, when the request says
                                                               (lean endpoint: the ``X-Agent-Name`` header)
``agl_tinker.messages``             str (JSON)                 lossless OpenAI-format input messages
``agl_tinker.completion``           str (JSON)                 lossless OpenAI-format assistant message
``agl_tinker.sequence_fingerprint`` str (hex)                  fingerprint of prompt + response tokens
``agl_tinker.prefix_length``        int                        length L of a prompt prefix the writer vouches for
``agl_tinker.prefix_fingerprint``   str (hex)                  fingerprint of ``prompt_token_ids[:L]``
``agl_tinker.tool_calls.parse_failures`` int                   tool calls in the answer that did not parse
                                                               (returned as text); absent when none
``agl_tinker.tools_offered``        int                        number of tools the prompt declares (0 under
                                                               ``tool_choice: none``, hosted tools not
                                                               counted; lean endpoint)
``agl_tinker.api``                  str                        API the agent called: ``chat.completions``,
                                                               ``responses`` or ``messages`` (lean endpoint)
=================================  =========================  ==============================================

The fingerprints exist for speed, not trust: when call k's ``prefix_fingerprint`` at length L equals
call k-1's ``sequence_fingerprint`` and L is call k-1's prompt + response length, the reader knows
(up to a 2^-128 BLAKE2 collision) that prompt k extends prompt k-1 + response k-1 without reading the
history, so alignment costs O(new tokens) per call instead of O(history). Both hashes are computed
from the token lists written in the same spans; when they are absent or disagree the reader falls
back to an exact token comparison. Rewards use Agent-lightning's ``emit_reward`` format
(``agentlightning.reward.{i}.name|value`` on an ``agentlightning.annotation`` span).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any, Final

# --- span names ---------------------------------------------------------------------------------
LLM_CALL_SPAN_NAME: Final = "litellm_request"
"""Per-call span of Agent-lightning's LLMProxy (LiteLLM OTel); our endpoint writes the same name."""
RAW_LLM_CALL_SPAN_NAME: Final = "raw_gen_ai_request"
"""LiteLLM's raw provider child span (``llm.hosted_vllm.*`` attributes, stringified)."""
CLIENT_LLM_CALL_SPAN_NAME: Final = "openai.chat.completion"
"""Client-side span of the AgentOps/OpenAI instrumentation in the runner."""
LLM_CALL_SPAN_NAMES: Final = frozenset(
    {LLM_CALL_SPAN_NAME, RAW_LLM_CALL_SPAN_NAME, CLIENT_LLM_CALL_SPAN_NAME}
)
TRIPLET_LLM_CALL_MATCH: Final = r"^litellm_request$|openai\.chat\.completion"
"""``llm_call_match`` for Agent-lightning's ``TracerTraceToTriplet`` so it reads our spans too."""
REWARD_SPAN_NAME: Final = "agentlightning.annotation"

# --- attribute keys (standard / Agent-lightning) -------------------------------------------------
PROMPT_TOKEN_IDS: Final = "prompt_token_ids"
RESPONSE_TOKEN_IDS: Final = "response_token_ids"
RESPONSE_ID: Final = "gen_ai.response.id"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
PROMPT_PREFIX: Final = "gen_ai.prompt"
COMPLETION_PREFIX: Final = "gen_ai.completion"
COMPLETION_FINISH_REASON: Final = "gen_ai.completion.0.finish_reason"
FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
"""LiteLLM's JSON list of finish reasons (read only)."""
CLIENT_LOGPROBS: Final = "logprobs.content"
"""AgentOps client format: JSON list of ``{"token", "logprob", ...}`` (read only)."""
HOSTED_VLLM_PREFIX: Final = "llm.hosted_vllm."
"""LLMProxy raw-span prefix: ``prompt_token_ids``, ``response_token_ids``, ``choices``, ``id`` (read only)."""
OPERATION_OUTPUT_ID: Final = "agentlightning.operation.output.id"
REWARD_PREFIX: Final = "agentlightning.reward"

# --- attribute keys (custom) ---------------------------------------------------------------------
AGL_RESPONSE_LOGPROBS: Final = "agl_tinker.response_logprobs"
AGL_WEIGHTS_VERSION: Final = "agl_tinker.weights_version"
AGL_SAMPLED_SEQUENCE_ID: Final = "agl_tinker.sampled_sequence_id"
AGL_AGENT_NAME: Final = "agl_tinker.agent_name"
AGL_MESSAGES: Final = "agl_tinker.messages"
AGL_COMPLETION: Final = "agl_tinker.completion"
AGL_SEQUENCE_FINGERPRINT: Final = "agl_tinker.sequence_fingerprint"
AGL_PREFIX_LENGTH: Final = "agl_tinker.prefix_length"
AGL_PREFIX_FINGERPRINT: Final = "agl_tinker.prefix_fingerprint"
AGL_TOOL_CALL_PARSE_FAILURES: Final = "agl_tinker.tool_calls.parse_failures"
AGL_TOOLS_OFFERED: Final = "agl_tinker.tools_offered"
AGL_API: Final = "agl_tinker.api"

AGENT_NAME_HEADER: Final = "X-Agent-Name"
"""Request header an agent (or its framework's client settings) uses to name itself to the endpoint."""

_TOKEN_ARRAY_CODE: Final = "I"
assert array(_TOKEN_ARRAY_CODE).itemsize == 4, "token fingerprints assume 4-byte unsigned ints"


def _token_bytes(tokens: Sequence[int], what: str) -> bytes:
    try:
        return array(_TOKEN_ARRAY_CODE, tokens).tobytes()
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"{what} must be token ids in [0, 2**32): {exc}") from exc


def token_fingerprint(tokens: Sequence[int]) -> str:
    """BLAKE2b-128 of the tokens as little-endian uint32: equal fingerprints mean equal tokens."""
    return blake2b(_token_bytes(tokens, "tokens"), digest_size=16).hexdigest()


def llm_call_attributes(
    *,
    prompt_token_ids: Sequence[int],
    response_token_ids: Sequence[int],
    logprobs: Sequence[float] | None,
    response_id: str,
    model: str | None = None,
    response_model: str | None = None,
    finish_reason: str | None = None,
    weights_version: int | str | None = None,
    sampled_sequence_id: str | None = None,
    agent_name: str | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
    completion: Mapping[str, Any] | None = None,
    prefix_length: int | None = None,
    flat_messages: bool = True,
    tool_call_parse_failures: int = 0,
) -> dict[str, Any]:
    """Attributes of one LLM-call span (name :data:`LLM_CALL_SPAN_NAME`) in the shared schema.

    ``prefix_length``: length of the previous call's prompt + response when the writer knows this
    prompt continues it (token-in-token-out); its fingerprint lets the reader skip the history.
    ``flat_messages`` also writes ``gen_ai.prompt.{i}.*`` so Agent-lightning's adapters show
    ``raw_content``; ``agl_tinker.messages`` is always the lossless copy. Logprob count mismatches
    are written as they are: the reader reports them rather than the writer hiding them.
    ``tool_call_parse_failures``: tool calls the policy wrote that did not parse (counted, not hidden).
    ``sampled_sequence_id``: the sample's recorded ``sequence_id`` (only when the service recorded it).
    """
    if not response_id:
        raise ValueError("response_id is required: it deduplicates client-side and proxy spans")
    prompt = list(prompt_token_ids)
    response = list(response_token_ids)
    prompt_bytes = _token_bytes(prompt, "prompt_token_ids")
    hasher = blake2b(prompt_bytes, digest_size=16)
    hasher.update(_token_bytes(response, "response_token_ids"))
    attrs: dict[str, Any] = {
        PROMPT_TOKEN_IDS: prompt,
        RESPONSE_TOKEN_IDS: response,
        RESPONSE_ID: response_id,
        AGL_SEQUENCE_FINGERPRINT: hasher.hexdigest(),
        "gen_ai.completion.0.role": "assistant",
    }
    if logprobs is not None:
        attrs[AGL_RESPONSE_LOGPROBS] = [float(x) for x in logprobs]
    if prefix_length is not None:
        if not 0 < prefix_length <= len(prompt):
            raise ValueError(f"prefix_length {prefix_length} outside the prompt (length {len(prompt)})")
        attrs[AGL_PREFIX_LENGTH] = prefix_length
        attrs[AGL_PREFIX_FINGERPRINT] = blake2b(prompt_bytes[: 4 * prefix_length], digest_size=16).hexdigest()
    if model is not None:
        attrs[REQUEST_MODEL] = model
    if response_model is not None or model is not None:
        attrs[RESPONSE_MODEL] = response_model if response_model is not None else model
    if finish_reason is not None:
        attrs[COMPLETION_FINISH_REASON] = finish_reason
    if weights_version is not None:
        attrs[AGL_WEIGHTS_VERSION] = weights_version
    if sampled_sequence_id:
        attrs[AGL_SAMPLED_SEQUENCE_ID] = sampled_sequence_id
    if agent_name is not None:
        attrs[AGL_AGENT_NAME] = agent_name
    if tool_call_parse_failures:
        attrs[AGL_TOOL_CALL_PARSE_FAILURES] = tool_call_parse_failures
    if messages is not None:
        attrs[AGL_MESSAGES] = json.dumps(list(messages), ensure_ascii=False)
        if flat_messages:
            for i, message in enumerate(messages):
                attrs[f"{PROMPT_PREFIX}.{i}.role"] = str(message.get("role", ""))
                content = message.get("content")
                if content is not None:
                    attrs[f"{PROMPT_PREFIX}.{i}.content"] = (
                        content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
                    )
    if completion is not None:
        attrs[AGL_COMPLETION] = json.dumps(dict(completion), ensure_ascii=False)
        content = completion.get("content")
        if flat_messages and isinstance(content, str):
            attrs["gen_ai.completion.0.content"] = content
    return attrs


def reward_attributes(value: float, *, name: str = "primary", **dimensions: float) -> dict[str, Any]:
    """Attributes of an ``agl.emit_reward`` span (name :data:`REWARD_SPAN_NAME`); primary first."""
    attrs: dict[str, Any] = {f"{REWARD_PREFIX}.0.name": name, f"{REWARD_PREFIX}.0.value": float(value)}
    for i, (dim, dim_value) in enumerate(dimensions.items(), start=1):
        attrs[f"{REWARD_PREFIX}.{i}.name"] = dim
        attrs[f"{REWARD_PREFIX}.{i}.value"] = float(dim_value)
    return attrs


def request_attributes(agent_name: str | None, tools_offered: int, api: str | None = None) -> dict[str, Any]:
    """What an LLM-call span records about the request itself: the agent name it gave (when it
    gave a non-empty one), how many tools its prompt declares and the API it called (when given)."""
    attrs: dict[str, Any] = {AGL_TOOLS_OFFERED: tools_offered}
    if agent_name:
        attrs[AGL_AGENT_NAME] = agent_name
    if api is not None:
        attrs[AGL_API] = api
    return attrs
