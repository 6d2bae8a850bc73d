"""gpt-oss's offline tokenizer: a ``tokenizer.json`` rebuilt from the o200k BPE ranks that the
``quicktok-v1`` package ships, with the harmony special tokens. The reference is OpenAI's own
``openai-harmony`` encoding, loaded offline from those ranks written out as ``o200k_base.tiktoken``
(harmony checks the file's SHA-256 against OpenAI's published one, so this also proves the ranks are
OpenAI's); quicktok's ``o200k_harmony`` encoder is a second, independent oracle."""

from __future__ import annotations

import base64
import functools
import os
from pathlib import Path

import openai_harmony
import pytest
import quicktok
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizer_corpus import corpus

from fakes.tokenizer import GPT_OSS, load_qwen_ranks, load_tokenizer, offline_vocabulary

MODEL = "openai/gpt-oss-20b"

HARMONY_CORPUS = [
    "<|start|>user<|message|>What's the weather in Paris?<|end|><|start|>assistant",
    "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant<|channel|>final<|message|>Sunny.<|return|>",
    '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
    "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>72 degrees<|end|>",
    "namespace functions {\n\n// Search the web\ntype search = (_:\n{\nquery: string,\n}) => any;\n\n} // namespace functions",
    "Don't STOP: HTTPServer's camelCaseWords, I'M HERE; 12345678 a/b/c\r\n\r\n  x",
]
"""Harmony messages, tool declarations and o200k's case-aware word pieces, beside the shared corpus."""
CORPUS = corpus(HARMONY_CORPUS)


@functools.cache
def _tok():  # type: ignore[no-untyped-def]
    return load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def harmony(tmp_path_factory: pytest.TempPathFactory) -> openai_harmony.HarmonyEncoding:
    """OpenAI's harmony encoding, its vocabulary file written from quicktok's ranks (no download)."""
    directory: Path = tmp_path_factory.mktemp("encodings")
    ranks = sorted(load_qwen_ranks(GPT_OSS).items(), key=lambda item: item[1])
    text = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks)
    (directory / "o200k_base.tiktoken").write_text(text)
    previous = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(directory)
    try:
        return openai_harmony.load_harmony_encoding(openai_harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    finally:
        if previous is None:
            del os.environ["TIKTOKEN_ENCODINGS_BASE"]
        else:
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = previous


def test_the_offline_tokenizer_agrees_with_harmony_and_quicktok_on_the_corpus(
    harmony: openai_harmony.HarmonyEncoding,
) -> None:
    reference = quicktok.get_encoding("o200k_harmony")
    for text in CORPUS:
        ids = _tok().encode(text, add_special_tokens=False)
        assert ids == harmony.encode(text, allowed_special="all"), text
        assert ids == list(reference.encode(text, allowed_special="all")), text
        assert _tok().decode(ids) == text
        assert harmony.decode(ids) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_it_agrees_with_quicktok_on_any_text(text: str) -> None:
    reference = quicktok.get_encoding("o200k_harmony")
    assert _tok().encode(text, add_special_tokens=False) == list(
        reference.encode(text, allowed_special="all")
    )


def test_special_tokens_are_harmonys(harmony: openai_harmony.HarmonyEncoding) -> None:
    tok = _tok()
    assert offline_vocabulary(MODEL) is GPT_OSS and offline_vocabulary("openai/gpt-oss-120b") is GPT_OSS
    assert tok.name_or_path == MODEL and len(tok) == 201088
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|startoftext|>", "<|return|>", "<|endoftext|>")
    names = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>")
    for content in (*names, "<|endoftext|>", "<|startoftext|>", "<|reserved_200013|>", "<|reserved_201087|>"):
        (token_id,) = tok.encode(content, add_special_tokens=False)
        assert [token_id] == harmony.encode(content, allowed_special="all"), content
        assert harmony.is_special_token(token_id) and tok.decode([token_id], skip_special_tokens=True) == ""
    # The renderer's stop tokens: harmony's for an assistant's actions (an answer or a tool call).
    stops = tok.convert_tokens_to_ids(["<|return|>", "<|call|>"])
    assert sorted(stops) == sorted(harmony.stop_tokens_for_assistant_actions())
    assert tok.encode("Hello world") == list(GPT_OSS.hello_world)  # no bos is prepended
