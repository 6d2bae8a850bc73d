"""A tokenizer wrapper that remembers recent ``encode`` results.

A renderer encodes a chat piece by piece: role headers, end-of-turn markers and, without
token-in-token-out, every earlier turn again on each request. Through ``transformers`` each
``encode`` call is mostly Python wrapping around a short Rust call, which made rendering the largest
part of the endpoint's own time per call (``benchmarks/endpoint.py`` measures it). Encoding is a pure function of the
text, so a bounded LRU of the short pieces gives identical ids at a fraction of the cost.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

_KEYED_ARGUMENTS = {"split_special_tokens"}


class CachedEncodeTokenizer:
    """Delegates everything to ``tokenizer``; ``encode(text)`` of texts up to ``max_chars`` is cached.

    ``split_special_tokens`` is part of the key; calls with any other argument (tensors, truncation,
    ...), non-``str`` input or a result that is not a plain list bypass the cache. Returned lists
    are fresh copies, so a caller mutating one cannot poison the cache.
    """

    def __init__(self, tokenizer: Any, *, max_entries: int = 4096, max_chars: int = 2048) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[tuple[Any, ...], tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, text: Any, add_special_tokens: bool = True, **kwargs: Any) -> Any:
        cacheable = (
            isinstance(text, str) and len(text) <= self.max_chars and kwargs.keys() <= _KEYED_ARGUMENTS
        )
        if not cacheable:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens, **kwargs)
        key = (text, bool(add_special_tokens), kwargs.get("split_special_tokens"))
        with self._lock:
            ids = self._cache.get(key)
            if ids is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return list(ids)
        fresh = self.tokenizer.encode(text, add_special_tokens=add_special_tokens, **kwargs)
        if not isinstance(fresh, list):
            return fresh
        with self._lock:
            self.misses += 1
            self._cache[key] = tuple(fresh)
            if len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return list(fresh)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)
