"""Token-in-token-out for renderers that render a conversation whole (DeepSeek V4.1, Qwen3.8 and gpt-oss
override ``build_generation_prompt``): the continuation after a remembered answer is cut out of the full
render at the stop token that closes that answer where that token closes assistant messages alone, else
it is the full render's tail when that tail is the new messages rendered one by one; otherwise the
conversation is rendered whole."""

from __future__ import annotations

import warnings

from tinker_cookbook import renderers
from tinker_cookbook.renderers import Message, ToolCall
from tinker_cookbook.renderers.llama3 import Llama3Renderer

from agl_tinker.endpoint.tito import TokenMemory, continuation_after_stop, render_continuation
from fakes.tokenizer import load_tokenizer

DEEPSEEK = "deepseek-ai/DeepSeek-V4.1-Flash"
GPT_OSS = "openai/gpt-oss-20b"


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


def test_a_renderer_that_closes_every_message_with_its_stop_token_is_continued_at_the_tail() -> None:
    renderer = _renderer("qwen3_8_xhigh_reasoning", "Qwen/Qwen3.8-27B")
    messages = _conversation()
    whole = renderer.build_generation_prompt(messages).to_ints()
    tail = continuation_after_stop(renderer, messages, 5, whole)
    expected = "\n<|im_start|>user\nThanks.<|im_end|>\n<|im_start|>assistant\n"
    assert tail is not None and renderer.tokenizer.decode(tail).startswith(expected)
    assert whole[-len(tail) :] == tail
    memory = TokenMemory(renderer)
    plan, digests = memory.plan(messages[:2], scope="r")
    memory.remember(digests, messages[2], plan.tokens, [1, 2, 3], scope="r")
    later, _ = memory.plan(messages[:4], scope="r")
    assert later.reused_length == len(plan.tokens) + 3 and later.tokens[: later.reused_length][-3:] == [
        1,
        2,
        3,
    ]


def test_harmony_keeps_the_sampled_return_where_history_would_end_the_answer() -> None:
    """gpt-oss samples ``<|return|>`` at the end of an answer; re-rendered history closes the same
    answer with ``<|end|>``. The next prompt continues the sampled tokens, ``<|return|>`` included."""
    renderer = _renderer("gpt_oss_no_sysprompt", GPT_OSS)
    tok = renderer.tokenizer
    memory = TokenMemory(renderer)
    messages = _conversation()
    plan, digests = memory.plan(messages[:2], scope="r")
    sampled = tok.encode("<|channel|>final<|message|>I am Bob.<|return|>", add_special_tokens=False)
    assert renderers.get_text_content(renderer.parse_response(sampled)[0]) == "I am Bob."
    memory.remember(digests, messages[2], plan.tokens, sampled, scope="r")
    later, _ = memory.plan(messages[:4], scope="r")
    assert later.reused_length == len(plan.tokens) + len(sampled)
    assert later.tokens[: later.reused_length] == [*plan.tokens, *sampled]
    suffix = tok.encode(
        "<|start|>user<|message|>And again?<|end|><|start|>assistant", add_special_tokens=False
    )
    assert later.tokens[later.reused_length :] == suffix
    rerendered = renderer.build_generation_prompt(messages[:4]).to_ints()
    assert "I am Bob.<|end|>" in tok.decode(rerendered) and later.tokens != rerendered


def test_a_tool_call_turn_is_continued_after_its_call_token() -> None:
    renderer = _renderer("gpt_oss_no_sysprompt", GPT_OSS)
    call = ToolCall(function=ToolCall.FunctionBody(name="search", arguments='{"query": "Paris"}'), id="c1")
    messages = [
        Message(role="user", content="Find Paris."),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="France", tool_call_id="c1", name="search"),
    ]
    whole = renderer.build_generation_prompt(messages).to_ints()
    tail = continuation_after_stop(renderer, messages, 2, whole)
    expected = "<|start|>functions.search to=assistant<|channel|>commentary<|message|>France<|end|><|start|>assistant"
    assert tail is not None and renderer.tokenizer.decode(tail) == expected


class _UpperCasing(Llama3Renderer):
    """A renderer that normalises the conversation before rendering it whole: its tail differs from
    the new messages rendered one by one."""

    def build_generation_prompt(self, messages, role="assistant", prefill=None):  # type: ignore[no-untyped-def]
        shouting = [Message(role=m["role"], content=str(m["content"]).upper()) for m in messages]
        return super().build_generation_prompt(shouting, role, prefill)


def test_a_renderer_whose_tail_differs_from_the_messages_is_rendered_whole() -> None:
    renderer = _UpperCasing(load_tokenizer("meta-llama/Llama-3.1-8B-Instruct"))
    messages = _conversation()
    whole = renderer.build_generation_prompt(messages).to_ints()
    assert render_continuation(renderer, messages, 5) is not None
    assert continuation_after_stop(renderer, messages, 5, whole) is None
    memory = TokenMemory(renderer)
    plan, digests = memory.plan(messages[:2], scope="r")
    memory.remember(digests, messages[2], plan.tokens, [1, 2, 3], scope="r")
    later, _ = memory.plan(messages[:4], scope="r")
    assert later.reused_length is None
    assert later.tokens == renderer.build_generation_prompt(messages[:4]).to_ints()
