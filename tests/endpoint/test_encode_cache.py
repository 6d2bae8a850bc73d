"""The encode cache returns exactly what the tokenizer returns, stays bounded, and shares nothing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agl_tinker.backend import get_tokenizer
from agl_tinker.endpoint.encode_cache import CachedEncodeTokenizer

MODEL = "Qwen/Qwen3-4B-Instruct-2507"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return get_tokenizer(MODEL)


PIECES = st.sampled_from(["<|im_start|>", "<|im_end|>", "user", "\n", " Hello", "日本", "🙂", "<think>", ""])


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(st.one_of(st.text(max_size=40), st.lists(PIECES, max_size=6).map("".join)), max_size=12)
)
def test_same_ids_as_the_tokenizer_cold_and_warm(tokenizer: Any, texts: list[str]) -> None:
    cached = CachedEncodeTokenizer(tokenizer, max_entries=8)
    for _ in range(2):  # the second round is served (partly) from the cache
        for text in texts:
            for special in (False, True):
                assert cached.encode(text, add_special_tokens=special) == tokenizer.encode(
                    text, add_special_tokens=special
                )
            assert cached.encode(text, split_special_tokens=True) == tokenizer.encode(
                text, split_special_tokens=True
            )


def test_hits_are_fresh_lists_and_the_cache_is_bounded(tokenizer: Any) -> None:
    cached = CachedEncodeTokenizer(tokenizer, max_entries=3)
    first = cached.encode("<|im_start|>user\n", add_special_tokens=False)
    first.append(-1)
    assert cached.encode("<|im_start|>user\n", add_special_tokens=False) == tokenizer.encode(
        "<|im_start|>user\n", add_special_tokens=False
    )
    assert cached.hits == 1
    for i in range(10):
        cached.encode(f"text {i}")
    assert len(cached._cache) == 3


def test_long_texts_and_other_arguments_bypass_the_cache(tokenizer: Any) -> None:
    cached = CachedEncodeTokenizer(tokenizer, max_chars=10)
    assert cached.encode("a" * 50) == tokenizer.encode("a" * 50)
    assert (
        cached.encode("hi", return_tensors="pt").tolist()
        == tokenizer.encode("hi", return_tensors="pt").tolist()
    )
    assert cached.encode(["x", "y"][0]) == tokenizer.encode("x")
    assert cached.misses == 1 and not cached.hits  # only "x" was cacheable
    with pytest.raises(ValueError, match="max_entries"):
        CachedEncodeTokenizer(tokenizer, max_entries=0)


def test_everything_else_is_the_tokenizer(tokenizer: Any) -> None:
    cached = CachedEncodeTokenizer(tokenizer)
    assert cached.decode([9707]) == tokenizer.decode([9707])
    assert cached.eos_token_id == tokenizer.eos_token_id
    assert len(cached) == len(tokenizer)
