"""LiteLLM provider over a Tinker ``SamplingClient``: render, sample once, parse.

Both servers (the lean one and Agent-lightning's LLMProxy) reach the policy through
:class:`TinkerChatProvider`, so every answer is the same :class:`~agl_tinker.endpoint.generation.Generation`
(token ids, logprobs, weights version) turned into a body by :mod:`agl_tinker.endpoint.generation`. The
policy is swapped atomically: a request reads the current ``(sampling_client, version)`` pair once,
so requests in flight finish on the weights they started with.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import litellm
import tinker
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import ModelResponse
from tinker_cookbook import renderers
from tinker_cookbook.capture.proxy.app import _is_context_overflow
from tinker_cookbook.model_info import get_recommended_renderer_name
from tinker_cookbook.renderers import ToolCall, get_text_content
from tinker_cookbook.tokenizer_utils import Tokenizer

from agl_tinker.endpoint.chat_request import BadRequest, ChatRequest, parse_chat_request
from agl_tinker.endpoint.encode_cache import CachedEncodeTokenizer
from agl_tinker.endpoint.generation import Generation, fill_response, openai_tool_calls
from agl_tinker.endpoint.registration import PROVIDER_NAME
from agl_tinker.endpoint.request_scope import tito_scope
from agl_tinker.endpoint.tito import TokenMemory
from agl_tinker.tinker_retry import Retrier, RetryingSamplingClient, RetryPolicy, TinkerCallError

logger = logging.getLogger(__name__)


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
    records_stability_info: bool = False
    """The client was created with ``record_stability_info=True``: its samples' ``sequence_id`` s
    name recorded sequences, so calls record them (the SDK does not say so on the client)."""


def _truncate_at_stop(tokenizer: Any, tokens: list[int], stops: list[str]) -> tuple[int, str, str] | None:
    """Shortest token prefix whose text contains a client stop string, the text before the stop,
    and the stop string found first.

    The sampler only takes this model's token-id stops, so client strings are applied here; the
    tokens kept are the ones that produced the stop, like a sampler-side string stop would keep.
    """
    text = tokenizer.decode(tokens)
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return None
    cut, stop = min(hits)
    low, high = 1, len(tokens)
    while low < high:  # smallest k with a stop inside decode(tokens[:k]); monotone in k
        mid = (low + high) // 2
        if any(s in tokenizer.decode(tokens[:mid]) for s in stops):
            high = mid
        else:
            low = mid + 1
    return low, text[:cut], stop


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
        records_stability_info: bool = False,
        token_in_token_out: bool = True,
        max_context_tokens: int = 32768,
        default_max_tokens: int = 1024,
        sample_retries: int = 2,
        tito_max_entries: int = 4096,
        strict_context: bool = False,
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
        self.strict_context = strict_context
        """``True``: a prompt plus ``max_tokens`` beyond the context is a 400; ``False``: the
        budget is clamped to what fits (the answer may end for length), counted in
        :attr:`max_tokens_clamped`."""
        self.max_tokens_clamped = 0
        """Requests whose ``max_tokens`` was cut to fit the context (a running count)."""
        self.default_max_tokens = default_max_tokens
        self.sample_retries = sample_retries
        self._retrier = Retrier(RetryPolicy(max_attempts=sample_retries + 1, base_delay_s=0.05))
        self.memory: TokenMemory | None = (
            TokenMemory(self.renderer, max_entries=tito_max_entries) if token_in_token_out else None
        )
        self._policy = Policy(sampling_client, weights_version, records_stability_info)
        self._stop_tokens = self.renderer.get_stop_sequences()

    # -- policy ---------------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        """The weights new requests are answered from."""
        return self._policy

    def swap(self, sampling_client: Any, version: int | str, *, records_stability_info: bool = False) -> None:
        """Answer new requests from ``sampling_client``; requests in flight keep their weights.

        ``records_stability_info``: the client was created with ``record_stability_info=True`` (calls
        then record their sample's ``sequence_id``)."""
        self._policy = Policy(sampling_client, version, records_stability_info)

    # -- core -----------------------------------------------------------------------------------
    def parse(self, body: dict[str, Any]) -> ChatRequest:
        """``body`` (an OpenAI chat request) validated against this renderer; raises ``BadRequest``."""
        return parse_chat_request(body, self.renderer, default_max_tokens=self.default_max_tokens)

    def _sampling_params(self, request: ChatRequest, max_tokens: int) -> tinker.SamplingParams:
        s = request.sampling
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "stop": self._stop_tokens}
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
        """One sample; transient errors retried by :mod:`agl_tinker.tinker_retry` (by the client itself
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

    def _fitted_max_tokens(self, prompt_length: int, max_tokens: int) -> int:
        """``max_tokens``, clamped to the room the prompt leaves unless :attr:`strict_context`.

        Raises ``BadRequest`` (naming both numbers) when the prompt alone fills the context, or
        when it does not fit with ``max_tokens`` and the context is strict.
        """
        room = self.max_context_tokens - prompt_length
        if max_tokens <= room:
            return max_tokens
        if room <= 0:
            raise BadRequest(
                f"prompt is too long: {prompt_length} prompt tokens leave no room in the context "
                f"window of {self.max_context_tokens} tokens"
            )
        if self.strict_context:
            raise BadRequest(
                f"prompt is too long: {prompt_length} prompt tokens plus {max_tokens} "
                f"max_tokens exceed the context window of {self.max_context_tokens} tokens"
            )
        self.max_tokens_clamped += 1
        return room

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
        max_tokens = self._fitted_max_tokens(len(prompt), request.sampling.max_tokens)
        response = await self._sample(policy, prompt, self._sampling_params(request, max_tokens))
        sequence = response.sequences[0]
        tokens = list(sequence.tokens)
        logprobs = None if sequence.logprobs is None else list(sequence.logprobs)

        stopped = (
            _truncate_at_stop(self.tokenizer, tokens, request.sampling.stop)
            if request.sampling.stop
            else None
        )
        if stopped is not None:
            keep, text, matched_stop = stopped
            tokens = tokens[:keep]
            logprobs = None if logprobs is None else logprobs[:keep]
            calls: list[ToolCall] = []
            finish_reason = "stop"
            clean = False
            unparsed: list[Any] = []
        else:
            matched_stop = None
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
        tool_calls = openai_tool_calls(calls)
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
            stop_sequence=matched_stop,
            sampled_sequence_id=sequence.sequence_id if policy.records_stability_info else None,
        )

    # -- LiteLLM --------------------------------------------------------------------------------
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
        """LiteLLM's entry point: parse, :meth:`generate` in the request's rollout scope, fill ``model_response``.

        Raises :class:`InvalidChatRequest` (HTTP 400) for a client mistake.
        """
        body = {**optional_params, "messages": messages}
        body.pop("stream", None)  # streaming is served from the finished answer by the server
        try:
            request = self.parse(body)
            generation = await self.generate(request, tito_scope(litellm_params))
        except BadRequest as exc:
            raise InvalidChatRequest(str(exc), model) from None
        return fill_response(generation, model, model_response, self.tokenizer, logprobs=request.logprobs)
