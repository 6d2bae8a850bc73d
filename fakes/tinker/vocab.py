"""A served vocabulary as the simulated policy needs it: ids, caching, token splits.

Splits provide drift: a token whose byte-level string can be cut into two strings that are
both tokens can be emitted as those two tokens; the decoded text is unchanged, the
tokenization is not canonical. That is what real models do now and then.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from fakes.tokenizer import load_vocabulary
from fakes.vocabularies import QWEN3, OfflineVocabulary


class Vocab:
    """Tokenizer plus the few ids and caches the policy uses on its hot paths."""

    def __init__(self, tokenizer: Any, name: str = QWEN3.name) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self._encode_cache: dict[str, tuple[int, ...]] = {}
        self._split_cache: dict[int, tuple[int, int] | None] = {}
        self._lock = threading.Lock()
        self._by_string: dict[str, int] | None = None
        self.size: int = len(tokenizer)
        self.added_ids: frozenset[int] = frozenset(tokenizer.added_tokens_decoder)

    def single(self, text: str) -> int:
        """The id of ``text``, which must be one token (a chat format's marker)."""
        ids = self.encode(text)
        if len(ids) != 1:
            raise RuntimeError(f"{text!r} is not a single token in this tokenizer")
        return int(ids[0])

    def encode(self, text: str) -> tuple[int, ...]:
        cached = self._encode_cache.get(text)
        if cached is None:
            cached = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            self._encode_cache[text] = cached
        return cached

    def encode_many(self, texts: list[str]) -> list[tuple[int, ...]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._encode_cache]
        if missing:
            batch = self.tokenizer(missing, add_special_tokens=False)["input_ids"]
            for text, ids in zip(missing, batch, strict=True):
                self._encode_cache[text] = tuple(ids)
        return [self._encode_cache[t] for t in texts]

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def split(self, token_id: int) -> tuple[int, int] | None:
        """Two tokens whose bytes concatenate to ``token_id``'s, cut nearest the middle."""
        if token_id in self._split_cache:
            return self._split_cache[token_id]
        result: tuple[int, int] | None = None
        if token_id not in self.added_ids:
            by_string = self._strings()
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            cuts = sorted(range(1, len(piece)), key=lambda i: abs(2 * i - len(piece)))
            for cut in cuts:
                left, right = by_string.get(piece[:cut]), by_string.get(piece[cut:])
                if left is not None and right is not None:
                    result = (left, right)
                    break
        self._split_cache[token_id] = result
        return result

    def _strings(self) -> dict[str, int]:
        with self._lock:
            if self._by_string is None:
                self._by_string = {
                    s: i for s, i in self.tokenizer.get_vocab().items() if i not in self.added_ids
                }
            return self._by_string


@functools.cache
def load_vocab(vocabulary: OfflineVocabulary = QWEN3) -> Vocab:
    """One :class:`Vocab` per vocabulary, shared by every model that uses it."""
    return Vocab(load_vocabulary(vocabulary), vocabulary.name)
