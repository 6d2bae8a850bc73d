"""Token-in-token-out for renderers that render a conversation whole (DeepSeek V4.1 overrides
``build_generation_prompt``): the continuation after a remembered answer is cut out of the full render
at the stop token that closes that answer, and only where that token closes assistant messages alone."""

from __future__ import annotations

import warnings

from tinker_cookbook import renderers
from tinker_cookbook.renderers import Message

from agl_tinker.endpoint.tito import TokenMemory, continuation_after_stop
from fakes.tokenizer import load_tokenizer

DEEPSEEK = "deepseek-ai/DeepSeek-V4.1-Flash"


def _renderer(name: str, model: str) -> renderers.Renderer:
    warnings.simplefilter("ignore", FutureWarning)
    return renderers.get_renderer(name, load_tokenizer(model))


def _conversation() -> list[Message]:
    return [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Say you are Bob."),
        Message(role="assistant", content="I am Bob."),
        Message(role="user", content="And again?"),
        Message(role="assistant", content="Bob, still."),
        Message(role="user", content="Thanks."),
    ]


def test_the_continuation_is_the_full_renders_tail_after_the_answer() -> None:
    renderer = _renderer("deepseekv4_1", DEEPSEEK)
    messages = _conversation()
    whole = renderer.build_generation_prompt(messages).to_ints()
    tail = continuation_after_stop(renderer, messages, 5, whole)
    expected = renderer.tokenizer.encode("<｜User｜>Thanks.<｜Assistant｜><think>", add_special_tokens=False)
    assert tail == expected
    first = continuation_after_stop(renderer, messages, 3, whole)
    assert first is not None and first[-len(tail) :] == tail and len(first) > len(tail)


def test_remembered_tokens_replace_the_rerendered_history() -> None:
    renderer = _renderer("deepseekv4_1", DEEPSEEK)
    memory = TokenMemory(renderer)
    assert memory.enabled
    messages = _conversation()
    plan, digests = memory.plan(messages[:2], scope="r")
    sampled = renderer.tokenizer.encode("</think>I am Bob.<｜end▁of▁sentence｜>", add_special_tokens=False)
    memory.remember(digests, messages[2], plan.tokens, sampled, scope="r")
    later, _ = memory.plan(messages[:4], scope="r")
    assert later.reused_length == len(plan.tokens) + len(sampled)
    assert later.tokens[: later.reused_length] == [*plan.tokens, *sampled]
    rerendered = renderer.build_generation_prompt(messages[:4]).to_ints()
    assert later.tokens != rerendered  # history drops the thinking opener the prompt had
    suffix = renderer.tokenizer.encode("<｜User｜>And again?<｜Assistant｜><think>", add_special_tokens=False)
    assert later.tokens[later.reused_length :] == suffix


def test_a_renderer_that_closes_every_message_with_its_stop_token_is_rendered_whole() -> None:
    renderer = _renderer("qwen3_8_xhigh_reasoning", "Qwen/Qwen3.8-27B")
    messages = _conversation()
    whole = renderer.build_generation_prompt(messages).to_ints()
    assert continuation_after_stop(renderer, messages, 5, whole) is None
    memory = TokenMemory(renderer)
    plan, digests = memory.plan(messages[:2], scope="r")
    memory.remember(digests, messages[2], plan.tokens, [1, 2, 3], scope="r")
    later, _ = memory.plan(messages[:4], scope="r")
    assert later.reused_length is None
    assert later.tokens == renderer.build_generation_prompt(messages[:4]).to_ints()
