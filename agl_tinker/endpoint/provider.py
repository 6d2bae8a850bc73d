"""LiteLLM provider over a Tinker ``SamplingClient``: render, sample, parse, with token ids and logprobs.

Both servers (the lean one and Agent-lightning's LLMProxy) reach the policy through this provider via
LiteLLM, so every answer carries the same extras: ``prompt_token_ids`` and ``weights_version`` on the
response, ``token_ids`` and ``token_logprobs`` on the choice (vLLM's names where vLLM has one). The
policy is swapped atomically: a request reads the current ``(sampling_client, version)`` pair once,
so requests in flight finish on the weights they started with.
"""

from __future__ import annotations

import ast
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import litellm
import tinker
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import Choices, Message, ModelResponse, Usage
from tinker_cookbook import renderers
from tinker_cookbook.capture.proxy.app import _is_context_overflow
from tinker_cookbook.model_info import get_recommended_renderer_name
from tinker_cookbook.renderers import ToolCall, get_text_content
from tinker_cookbook.tokenizer_utils import Tokenizer

from agl_tinker.endpoint.chat_request import BadRequest, ChatRequest, parse_chat_request
from agl_tinker.endpoint.encode_cache import CachedEncodeTokenizer
from agl_tinker.endpoint.tito import TokenMemory
from agl_tinker.loop.retry import Retrier, RetryingSamplingClient, RetryPolicy, TinkerCallError
from agl_tinker.spans import llm_call_attributes

logger = logging.getLogger(__name__)

PROVIDER_NAME = "agl_tinker"
"""Prefix of the LiteLLM provider names :func:`register` hands out."""

_REUSED_PREFIX = "agl_tinker_reused_prefix_length"
_PARSE_FAILURES = "agl_tinker_tool_call_parse_failures"
TITO_SCOPE = "agl_tinker_tito_scope"
"""LiteLLM ``metadata`` key under which the lean server passes a request's rollout attempt."""


class InvalidChatRequest(litellm.BadRequestError):  # type: ignore[misc]
    """A client mistake; LiteLLM and its proxy turn it into HTTP 400. ``detail`` is the bare reason."""

    def __init__(self, detail: str, model: str) -> None:
        super().__init__(message=detail, model=model, llm_provider=PROVIDER_NAME)
        self.detail = detail


@dataclass(frozen=True)
class Policy:
    """The weights that answer: a sampling client and the version it was made from."""

    sampling_client: Any
    version: int | str


@dataclass(frozen=True)
class Generation:
    """One answered request: exactly what was sampled and what the agent sees."""

    response_id: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    logprobs: list[float] | None
    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    weights_version: int | str
    reused_prefix_length: int | None
    """Prompt tokens taken verbatim from an earlier answer (token-in-token-out), if any."""
    tool_call_parse_failures: int = 0
    """Tool calls the policy wrote that did not parse; they are in ``text`` as written."""


def _answer_content(generation: Generation) -> str | None:
    """OpenAI's convention: ``None`` content for an answer that is only tool calls."""
    return generation.text if generation.text or not generation.tool_calls else None


def _openai_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments},
        }
        for call in calls
    ]


def tito_scope(litellm_params: Mapping[str, Any] | None) -> str | None:
    """The rollout attempt a request belongs to, for scoping token-in-token-out; ``None`` if unknown.

    The lean server puts it in LiteLLM's ``metadata`` (:data:`TITO_SCOPE`); behind Agent-lightning's
    LLMProxy it arrives as the ``x-rollout-id``/``x-attempt-id`` headers its middleware adds.
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
    """The request headers (names lower-cased) carrying ``x-rollout-id`` that Agent-lightning's
    LLMProxy middleware put in LiteLLM's ``metadata`` (a dict, or its ``repr`` string); else ``{}``."""
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


def _truncate_at_stop(tokenizer: Any, tokens: list[int], stops: list[str]) -> tuple[int, str] | None:
    """Shortest token prefix whose text contains a client stop string, and the text before the stop.

    The sampler only takes this model's token-id stops, so client strings are applied here; the
    tokens kept are the ones that produced the stop, like a sampler-side string stop would keep.
    """
    text = tokenizer.decode(tokens)
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return None
    cut, _ = min(hits)
    low, high = 1, len(tokens)
    while low < high:  # smallest k with a stop inside decode(tokens[:k]); monotone in k
        mid = (low + high) // 2
        if any(s in tokenizer.decode(tokens[:mid]) for s in stops):
            high = mid
        else:
            low = mid + 1
    return low, text[:cut]


class TinkerChatProvider(CustomLLM):
    """LiteLLM ``CustomLLM`` answering chat completions from a Tinker sampling client."""

    def __init__(
        self,
        sampling_client: Any,
        *,
        base_model: str,
        tokenizer: Any,
        renderer_name: str | None = None,
        weights_version: int | str = 0,
        token_in_token_out: bool = True,
        max_context_tokens: int = 32768,
        default_max_tokens: int = 1024,
        sample_retries: int = 2,
        tito_max_entries: int = 4096,
    ) -> None:
        super().__init__()
        self.base_model = base_model
        self.tokenizer = tokenizer
        # Renderers encode the same pieces (role headers, end markers) on every request.
        self.renderer = renderers.get_renderer(
            renderer_name or get_recommended_renderer_name(base_model),
            cast(Tokenizer, CachedEncodeTokenizer(tokenizer)),  # same interface, cached encode
        )
        self.max_context_tokens = max_context_tokens
        self.default_max_tokens = default_max_tokens
        self.sample_retries = sample_retries
        self._retrier = Retrier(RetryPolicy(max_attempts=sample_retries + 1, base_delay_s=0.05))
        self.memory: TokenMemory | None = (
            TokenMemory(self.renderer, max_entries=tito_max_entries) if token_in_token_out else None
        )
        self._policy = Policy(sampling_client, weights_version)
        self._stop_tokens = self.renderer.get_stop_sequences()

    # -- policy ---------------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._policy

    def swap(self, sampling_client: Any, version: int | str) -> None:
        """Answer new requests from ``sampling_client``; requests in flight keep their weights."""
        self._policy = Policy(sampling_client, version)

    # -- core -----------------------------------------------------------------------------------
    def parse(self, body: dict[str, Any]) -> ChatRequest:
        return parse_chat_request(body, self.renderer, default_max_tokens=self.default_max_tokens)

    def _sampling_params(self, request: ChatRequest) -> tinker.SamplingParams:
        s = request.sampling
        kwargs: dict[str, Any] = {"max_tokens": s.max_tokens, "stop": self._stop_tokens}
        if s.temperature is not None:
            kwargs["temperature"] = s.temperature
        if s.top_p is not None:
            kwargs["top_p"] = s.top_p
        if s.top_k is not None:
            kwargs["top_k"] = s.top_k
        if s.seed is not None:
            kwargs["seed"] = s.seed
        try:
            return tinker.SamplingParams(**kwargs)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"invalid sampling parameters: {exc}") from None

    async def _sample(self, policy: Policy, prompt: list[int], params: tinker.SamplingParams) -> Any:
        """One sample; transient errors retried by :mod:`agl_tinker.loop.retry` (by the client itself
        when it is a ``RetryingSamplingClient``, whose retries the training loop counts)."""
        model_input = tinker.ModelInput.from_ints(prompt)
        client = policy.sampling_client

        def sample() -> Any:
            # sample() returns an awaitable future; sample_async() is deprecated in the SDK.
            return client.sample(prompt=model_input, num_samples=1, sampling_params=params)

        try:
            if isinstance(client, RetryingSamplingClient):
                return await client.sample_async(prompt=model_input, num_samples=1, sampling_params=params)
            return await self._retrier.call("sample", sample)
        except TinkerCallError as exc:
            if isinstance(exc.error, tinker.BadRequestError) and _is_context_overflow(str(exc.error)):
                raise BadRequest(
                    f"prompt is too long: {len(prompt)} prompt tokens plus {params.max_tokens} "
                    "max_tokens exceed the model's context window"
                ) from exc
            raise

    async def generate(self, request: ChatRequest, scope: str | None = None) -> Generation:
        """Render (reusing tokens remembered in ``scope``, the request's rollout attempt), sample
        once, parse. Raises ``BadRequest`` on client errors."""
        policy = self._policy
        if self.memory is not None:
            plan, digests = self.memory.plan(request.messages, scope)
            prompt, reused = plan.tokens, plan.reused_length
        else:
            prompt = self.renderer.build_generation_prompt(request.messages).to_ints()
            digests, reused = [], None
        if len(prompt) + request.sampling.max_tokens > self.max_context_tokens:
            raise BadRequest(
                f"prompt is too long: {len(prompt)} prompt tokens plus {request.sampling.max_tokens} "
                f"max_tokens exceed the context window of {self.max_context_tokens} tokens"
            )
        response = await self._sample(policy, prompt, self._sampling_params(request))
        sequence = response.sequences[0]
        tokens = list(sequence.tokens)
        logprobs = None if sequence.logprobs is None else list(sequence.logprobs)

        stopped = (
            _truncate_at_stop(self.tokenizer, tokens, request.sampling.stop)
            if request.sampling.stop
            else None
        )
        if stopped is not None:
            keep, text = stopped
            tokens = tokens[:keep]
            logprobs = None if logprobs is None else logprobs[:keep]
            calls: list[ToolCall] = []
            finish_reason = "stop"
            clean = False
            unparsed: list[Any] = []
        else:
            message, termination = self.renderer.parse_response(tokens)
            text = get_text_content(message)
            # A tool call the policy botched goes back as the text it wrote (and is counted): the
            # agent sees what the model said, and the answer is not an error.
            unparsed = list(message.get("unparsed_tool_calls") or [])
            text += "".join(call.raw_text for call in unparsed)
            calls = [] if request.suppress_tool_calls else list(message.get("tool_calls") or [])
            clean = termination.is_clean
            if calls:
                finish_reason = "tool_calls"
            elif sequence.stop_reason == "length" or not clean:
                finish_reason = "length"
            else:
                finish_reason = "stop"
        tool_calls = _openai_tool_calls(calls)
        if self.memory is not None and clean:
            answer = renderers.Message(role="assistant", content=text)
            if calls:
                answer["tool_calls"] = calls
            self.memory.remember(digests, answer, prompt, tokens, scope)
        return Generation(
            response_id=f"chatcmpl-{uuid.uuid4().hex}",
            prompt_token_ids=prompt,
            response_token_ids=tokens,
            logprobs=logprobs,
            text=text,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            weights_version=policy.version,
            reused_prefix_length=reused,
            tool_call_parse_failures=len(unparsed),
        )

    # -- LiteLLM --------------------------------------------------------------------------------
    def _openai_logprobs(self, generation: Generation) -> dict[str, Any] | None:
        if generation.logprobs is None:
            return None
        pieces = self.tokenizer.convert_ids_to_tokens(generation.response_token_ids)
        return {
            "content": [
                {"token": str(piece), "logprob": lp, "bytes": None, "top_logprobs": []}
                for piece, lp in zip(pieces, generation.logprobs, strict=False)
            ]
        }

    def completion_dict(self, generation: Generation, request: ChatRequest, model: str) -> dict[str, Any]:
        """``generation`` as the JSON body :meth:`fill_response`'s ``model_dump()`` gives, built
        directly: the lean server's hot path skips building LiteLLM's pydantic response."""
        choice: dict[str, Any] = {
            "finish_reason": generation.finish_reason,
            "index": 0,
            "message": {
                "content": _answer_content(generation),
                "role": "assistant",
                "tool_calls": generation.tool_calls or None,
                "function_call": None,
            },
            "token_ids": generation.response_token_ids,
            "token_logprobs": generation.logprobs,
        }
        if request.logprobs:
            choice["logprobs"] = self._openai_logprobs(generation)
        prompt_tokens, completion_tokens = (
            len(generation.prompt_token_ids),
            len(generation.response_token_ids),
        )
        return {
            "id": generation.response_id,
            "created": int(time.time()),
            "model": model,
            "object": "chat.completion",
            "choices": [choice],
            "usage": {
                "completion_tokens": completion_tokens,
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "completion_tokens_details": None,
                "prompt_tokens_details": None,
            },
            "prompt_token_ids": generation.prompt_token_ids,
            "weights_version": generation.weights_version,
        }

    def fill_response(
        self, generation: Generation, request: ChatRequest, model: str, response: ModelResponse
    ) -> ModelResponse:
        """Write ``generation`` into a LiteLLM ``ModelResponse`` (OpenAI shape plus token extras)."""
        response.id = generation.response_id
        response.created = int(time.time())
        response.model = model
        choice = Choices(
            index=0,
            finish_reason=generation.finish_reason,
            message=Message(
                role="assistant",
                content=_answer_content(generation),
                tool_calls=generation.tool_calls or None,
            ),
            logprobs=self._openai_logprobs(generation) if request.logprobs else None,
        )
        choice.token_ids = generation.response_token_ids  # type: ignore[attr-defined]
        choice.token_logprobs = generation.logprobs  # type: ignore[attr-defined]
        response.choices = [choice]
        response.usage = Usage(  # type: ignore[attr-defined]
            prompt_tokens=len(generation.prompt_token_ids),
            completion_tokens=len(generation.response_token_ids),
            total_tokens=len(generation.prompt_token_ids) + len(generation.response_token_ids),
        )
        response.prompt_token_ids = generation.prompt_token_ids  # type: ignore[attr-defined]
        response.weights_version = generation.weights_version  # type: ignore[attr-defined]
        # The cost is known (nothing is billed); saying so spares LiteLLM a pricing lookup per call.
        response._hidden_params["response_cost"] = 0.0
        response._hidden_params[_REUSED_PREFIX] = generation.reused_prefix_length
        response._hidden_params[_PARSE_FAILURES] = generation.tool_call_parse_failures
        return response

    async def acompletion(  # type: ignore[override]
        self,
        model: str,
        messages: list,
        api_base: str,
        custom_prompt_dict: dict,
        model_response: ModelResponse,
        print_verbose: Callable,
        encoding: Any,
        api_key: Any,
        logging_obj: Any,
        optional_params: dict,
        acompletion: Any = None,
        litellm_params: Any = None,
        logger_fn: Any = None,
        headers: Any = None,
        timeout: Any = None,
        client: Any = None,
    ) -> ModelResponse:
        body = {**optional_params, "messages": messages}
        body.pop("stream", None)  # streaming is served from the finished answer by the server
        try:
            request = self.parse(body)
            generation = await self.generate(request, tito_scope(litellm_params))
        except BadRequest as exc:
            raise InvalidChatRequest(str(exc), model) from None
        return self.fill_response(generation, request, model, model_response)


def span_attributes(
    generation: Generation, messages: Sequence[Mapping[str, Any]], model: str
) -> dict[str, Any]:
    """The LLM-call span attributes (:mod:`agl_tinker.spans` schema) of one answer: the one builder.

    Both servers record through it: the lean server from the ``Generation`` it answered with, the
    LiteLLM paths (the lean server's ``litellm_dispatch``, LLMProxy's callback) from the response
    via :func:`generation_from_response`.

    Args:
        generation: the answer.
        messages: the request's messages, as the agent sent them.
        model: the served model name (request and response model).

    Returns:
        The span attributes.
    """
    completion: dict[str, Any] = {"role": "assistant", "content": _answer_content(generation)}
    if generation.tool_calls:
        completion["tool_calls"] = generation.tool_calls
    return llm_call_attributes(
        prompt_token_ids=generation.prompt_token_ids,
        response_token_ids=generation.response_token_ids,
        logprobs=generation.logprobs,
        response_id=generation.response_id,
        model=model,
        response_model=model,
        finish_reason=generation.finish_reason,
        weights_version=generation.weights_version,
        messages=messages,
        completion=completion,
        prefix_length=generation.reused_prefix_length,
        tool_call_parse_failures=generation.tool_call_parse_failures,
    )


def generation_from_response(response: ModelResponse) -> Generation:
    """The ``Generation`` a response of this provider was filled from (:meth:`TinkerChatProvider.fill_response`).

    Args:
        response: an answer of this provider, as LiteLLM hands it back (token extras included).

    Returns:
        The generation; ``text`` is the message content (``""`` for a tool-call-only answer).
    """
    choice = response.choices[0]
    message = choice.message  # type: ignore[union-attr,attr-defined]
    return Generation(
        response_id=response.id,
        prompt_token_ids=response.prompt_token_ids,  # type: ignore[attr-defined]
        response_token_ids=choice.token_ids,  # type: ignore[union-attr,attr-defined]
        logprobs=choice.token_logprobs,  # type: ignore[union-attr,attr-defined]
        text=message.content or "",
        tool_calls=[call.model_dump() for call in message.tool_calls or []],
        finish_reason=cast(str, choice.finish_reason),  # as fill_response set it
        weights_version=response.weights_version,  # type: ignore[attr-defined]
        reused_prefix_length=response._hidden_params.get(_REUSED_PREFIX),
        tool_call_parse_failures=response._hidden_params.get(_PARSE_FAILURES) or 0,
    )


def register(provider: TinkerChatProvider, served_model: str) -> str:
    """Register ``provider`` with LiteLLM under a name of its own; return its LiteLLM model string.

    Each provider gets its own LiteLLM provider name so several endpoints can live in one process
    (the tests run a lean server and an LLMProxy side by side).
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
    """Forget a provider registered by :func:`register` (its LiteLLM model string)."""
    name = model.split("/", 1)[0]
    litellm.custom_provider_map[:] = [e for e in litellm.custom_provider_map if e.get("provider") != name]
