"""Token-in-token-out: keep a multi-turn conversation one token sequence.

Re-rendering an assistant message the provider produced does not always give back the tokens it
sampled: renderers rewrite history (Qwen3's thinking renderer drops past ``<think>`` blocks) and a
sampler may emit a non-canonical tokenization of the same text. Training on the re-rendered tokens
trains on text the model never produced, so the provider remembers, for every clean answer, the
exact token sequence ``prompt + sampled`` keyed by a digest of the conversation up to and including
that answer. When a later request's history starts with such a conversation, its prompt becomes
those tokens plus the rendering of the new messages (and the generation prompt). A history the agent
edited has a different digest, misses, and is rendered as usual; alignment then reports the drift.

Entries are scoped (the endpoint passes the rollout attempt a request belongs to): two rollouts of
one group often say the same text with different tokens (a sampler may tokenize non-canonically),
and without a scope the second answer's tokens would replace the first's, so the first rollout's
next prompt would continue tokens it never sampled.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b

import tinker
from tinker_cookbook.renderers import Message, RenderContext, Renderer

_DIGEST_SIZE = 16


def _message_key(message: Message) -> bytes:
    """What of a message the renderer reads, in a stable byte form (tool call ids do not render)."""
    content = message.get("content") or ""
    calls = [(c.function.name, c.function.arguments) for c in message.get("tool_calls") or []]
    fields = [
        message["role"],
        content if isinstance(content, str) else json.dumps(content, sort_keys=True, default=str),
        calls,
        message.get("tool_call_id"),
        message.get("name"),
    ]
    return json.dumps(fields, ensure_ascii=False).encode()


def scope_digest(scope: str | None) -> bytes:
    """Start of the digest chain of conversations in ``scope`` (``None``: the unscoped chain)."""
    if scope is None:
        return b""
    return blake2b(b"scope\0" + scope.encode(), digest_size=_DIGEST_SIZE).digest()


def conversation_digests(messages: Sequence[Message], scope: str | None = None) -> list[bytes]:
    """``digests[i]`` identifies ``messages[: i + 1]`` in ``scope``; a chain so each prefix costs one hash."""
    digests: list[bytes] = []
    previous = scope_digest(scope)
    for message in messages:
        previous = blake2b(previous + _message_key(message), digest_size=_DIGEST_SIZE).digest()
        digests.append(previous)
    return digests


def extend_digest(previous: bytes, message: Message) -> bytes:
    """The digest of ``conversation + [message]`` given the conversation's digest."""
    return blake2b(previous + _message_key(message), digest_size=_DIGEST_SIZE).digest()


def renders_incrementally(renderer: Renderer) -> bool:
    """Whether the renderer uses the cookbook's per-message generation loop, which the suffix mirrors.

    Renderers that override ``build_generation_prompt`` (re-sorting, injected system messages) are
    rendered whole instead: see :func:`continuation_after_stop`.
    """
    return type(renderer).build_generation_prompt is Renderer.build_generation_prompt


def _single_stop_token(renderer: Renderer) -> int | None:
    stops = renderer.get_stop_sequences()
    return stops[0] if len(stops) == 1 and isinstance(stops[0], int) else None


def continuation_after_stop(
    renderer: Renderer, messages: Sequence[Message], start: int, rendered: Sequence[int]
) -> list[int] | None:
    """For a renderer rendered whole: the tokens of ``rendered`` (the whole conversation's
    generation prompt) after the assistant message ``messages[start - 1]``.

    Found by its closing token when the renderer's one stop token occurs in ``rendered`` exactly
    once per assistant message (DeepSeek V4.1 closes assistant messages, and only them, with
    ``<｜end▁of▁sentence｜>``): the k-th occurrence ends the k-th assistant message. Otherwise (a
    renderer that closes every message with its stop token, as Qwen's do, or one whose history
    closes an answer with another token than sampling stopped at, as gpt-oss's harmony rewrites
    ``<|return|>`` to ``<|end|>``), found as the tail: the rendering of ``messages[start:]`` message
    by message (:func:`render_continuation`) when ``rendered`` ends with exactly those tokens, so the
    new messages render the same in the whole conversation. None when neither holds, where only
    the full render is right.
    """
    if start < 1 or messages[start - 1]["role"] != "assistant":
        return None
    stop = _single_stop_token(renderer)
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    ends = [k for k, token in enumerate(rendered) if token == stop] if stop is not None else []
    if stop is not None and len(ends) == len(assistants):
        return list(rendered[ends[assistants.index(start - 1)] + 1 :])
    tail = render_continuation(renderer, messages, start)
    if not tail or len(tail) >= len(rendered) or list(rendered[-len(tail) :]) != tail:
        return None
    return tail


def render_continuation(renderer: Renderer, messages: Sequence[Message], start: int) -> list[int] | None:
    """Tokens of ``messages[start:]`` in the context of the whole conversation, plus the generation prompt.

    Mirrors ``Renderer.build_generation_prompt`` message by message (same ``RenderContext``), so for
    a renderer with the extension property ``render(messages[:start]) + this == render(messages)``.
    Returns ``None`` when a chunk is not plain tokens (images), where only a full render is right.
    """
    convo = list(messages)
    last_user = max((i for i, m in enumerate(convo) if m["role"] == "user"), default=-1)
    turn_start = renderer._last_assistant_turn_start_index(convo)
    tokens: list[int] = []
    for idx in range(start, len(convo)):
        ctx = RenderContext(
            idx=idx,
            is_last=idx == len(convo) - 1,
            prev_message=convo[idx - 1] if idx > 0 else None,
            next_message=convo[idx + 1] if idx + 1 < len(convo) else None,
            last_user_index=last_user,
            in_last_assistant_turn=idx >= turn_start,
        )
        rendered = renderer.render_message(convo[idx], ctx)
        for chunk in [rendered.header, *rendered.output]:
            if chunk is None:
                continue
            if not isinstance(chunk, tinker.EncodedTextChunk):
                return None
            tokens.extend(chunk.tokens)
    suffix_ctx = RenderContext(
        idx=len(convo),
        is_last=True,
        prev_message=convo[-1] if convo else None,
        last_user_index=last_user,
        in_last_assistant_turn=True,
    )
    tokens.extend(renderer._get_generation_suffix("assistant", suffix_ctx))
    return tokens


@dataclass(frozen=True)
class PromptPlan:
    """The prompt to sample and, when it reused remembered tokens, how many of them it reused."""

    tokens: list[int]
    reused_length: int | None = None


class TokenMemory:
    """LRU of ``prompt + sampled`` token sequences, bounded by entries and by total tokens."""

    def __init__(self, renderer: Renderer, *, max_entries: int = 4096, max_tokens: int = 4_000_000) -> None:
        self._renderer = renderer
        self._max_entries = max_entries
        self._max_tokens = max_tokens
        self._entries: OrderedDict[bytes, tuple[int, ...]] = OrderedDict()
        self._total_tokens = 0
        self._incremental = renders_incrementally(renderer)

    def __len__(self) -> int:
        return len(self._entries)

    def plan(self, messages: Sequence[Message], scope: str | None = None) -> tuple[PromptPlan, list[bytes]]:
        """The prompt for ``messages``: remembered tokens (of the same ``scope``) + rendered
        continuation when possible.

        Also returns the conversation digests so :meth:`remember` does not hash the history twice.
        """
        digests = conversation_digests(messages, scope)
        whole: list[int] | None = None  # the full render, made once if needed
        for i in range(len(messages) - 1, -1, -1):
            if messages[i]["role"] != "assistant":
                continue
            remembered = self._entries.get(digests[i])
            if remembered is None:
                continue
            if self._incremental:
                continuation = render_continuation(self._renderer, messages, i + 1)
            else:
                whole = self._renderer.build_generation_prompt(list(messages)).to_ints()
                continuation = continuation_after_stop(self._renderer, messages, i + 1, whole)
            if continuation is None:
                break
            self._entries.move_to_end(digests[i])
            return PromptPlan([*remembered, *continuation], reused_length=len(remembered)), digests
        if whole is None:
            whole = self._renderer.build_generation_prompt(list(messages)).to_ints()
        return PromptPlan(whole), digests

    def remember(
        self,
        digests: Sequence[bytes],
        answer: Message,
        prompt: Sequence[int],
        sampled: Sequence[int],
        scope: str | None = None,
    ) -> None:
        """Remember the exact tokens of ``conversation + [answer]`` (digests of the conversation,
        as :meth:`plan` returned them for the same ``scope``)."""
        key = extend_digest(digests[-1] if digests else scope_digest(scope), answer)
        sequence = (*prompt, *sampled)
        if len(sequence) > self._max_tokens:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._total_tokens -= len(old)
        self._entries[key] = sequence
        self._total_tokens += len(sequence)
        while len(self._entries) > self._max_entries or self._total_tokens > self._max_tokens:
            _, evicted = self._entries.popitem(last=False)
            self._total_tokens -= len(evicted)
