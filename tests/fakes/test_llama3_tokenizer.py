"""Llama 3's offline tokenizer: a ``tokenizer.json`` rebuilt from the Llama 3 BPE ranks that the
``quicktok-v1`` package ships, with Llama 3.1's special tokens. Oracles: quicktok's own encoder, and
tiktoken over the same ranks (two implementations independent of ``tokenizers``)."""

from __future__ import annotations

import functools

import quicktok
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizer_corpus import LLAMA3_CHAT, corpus

from fakes.tokenizer import LLAMA3, load_qwen_ranks, load_tokenizer, offline_vocabulary

MODEL = "meta-llama/Llama-3.1-8B-Instruct"

CORPUS = corpus(LLAMA3_CHAT)


@functools.cache
def _tok():  # type: ignore[no-untyped-def]
    return load_tokenizer(MODEL)


@functools.cache
def _tiktoken() -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="llama3",
        pat_str=LLAMA3.pretokenize_regex,
        mergeable_ranks=load_qwen_ranks(LLAMA3),
        special_tokens={content: token_id for token_id, content, _special in LLAMA3.added_tokens},
    )


def test_the_offline_tokenizer_agrees_with_quicktok_and_tiktoken_on_the_corpus() -> None:
    reference = quicktok.get_encoding("llama3")
    for text in CORPUS:
        ids = _tok().encode(text, add_special_tokens=False)
        assert ids == _tiktoken().encode(text, allowed_special="all"), text
        ordinary = (
            text.replace("<|start_header_id|>", "").replace("<|end_header_id|>", "").replace("<|eot_id|>", "")
        )
        assert _tok().encode(ordinary, add_special_tokens=False) == list(reference.encode(ordinary)), text
        assert _tok().decode(ids) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_it_agrees_with_tiktoken_on_any_text(text: str) -> None:
    assert _tok().encode(text, add_special_tokens=False) == _tiktoken().encode(text, allowed_special="all")


def test_special_tokens_and_bos() -> None:
    tok = _tok()
    assert offline_vocabulary(MODEL) is LLAMA3 and tok.name_or_path == MODEL
    assert len(tok) == 128256
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", None)
    names = {"<|begin_of_text|>": 128000, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007}
    names |= {"<|eom_id|>": 128008, "<|eot_id|>": 128009, "<|python_tag|>": 128010}
    names |= {"<|reserved_special_token_2|>": 128005, "<|reserved_special_token_247|>": 128255}
    for content, token_id in names.items():
        assert tok.encode(content, add_special_tokens=False) == [token_id]
        assert tok.decode([token_id], skip_special_tokens=True) == ""
    assert tok.encode("Hello world") == [128000, *LLAMA3.hello_world]  # the Hugging Face tokenizer's bos
