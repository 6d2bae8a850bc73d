"""The simulated model reads each served family's rendered prompts back into the conversation: every
turn's role and text, and the declared tools, from what the cookbook's renderer for that family wrote."""

from __future__ import annotations

import warnings

import pytest
from tinker_cookbook import model_info, renderers
from tinker_cookbook.renderers import Message

from fakes.lineup import CATALOG
from fakes.tinker.prior import Conversation, load_prior
from fakes.tokenizer import load_tokenizer

ONE_PER_FORMAT = {m.chat_format: name for name, m in reversed(CATALOG.items())}
TOOL = {
    "name": "search",
    "description": "Search the web",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}


def _parse(model_name: str, messages: list[Message], tools: bool) -> Conversation:
    warnings.simplefilter("ignore", FutureWarning)
    renderer = renderers.get_renderer(
        model_info.get_recommended_renderer_name(model_name), load_tokenizer(model_name)
    )
    if tools:
        messages = renderer.create_conversation_prefix_with_tools([TOOL], "Be brief.") + messages[1:]  # type: ignore[list-item]
    chat_format = CATALOG[model_name].chat_format
    text = renderer.tokenizer.decode(renderer.build_generation_prompt(messages).to_ints())
    return Conversation.parse(
        text, chat_format.turn, chat_format.end_of_turn, chat_format.tools, chat_format.roles
    )


@pytest.mark.parametrize("chat_format", list(ONE_PER_FORMAT), ids=lambda f: f.name)
def test_turns_are_read_back_from_each_familys_prompt(chat_format) -> None:  # type: ignore[no-untyped-def]
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Say you are Bob."),
        Message(role="assistant", content="I am Bob."),
        Message(role="user", content="Now 'quote' me."),
    ]
    conversation = _parse(ONE_PER_FORMAT[chat_format], messages, tools=False)
    *turns, opened = conversation.messages  # the generation prompt opens the assistant's turn
    assert opened.role == "assistant" and opened.content.strip() in ("", "<think>")
    dialogue = [(m.role, m.content.removeprefix("</think>").strip()) for m in turns if m.role != "system"]
    assert dialogue[-3:] == [
        ("user", "Say you are Bob."),
        ("assistant", "I am Bob."),
        ("user", "Now 'quote' me."),
    ]
    assert conversation.system.endswith("Be brief.") and conversation.last_user == "Now 'quote' me."


@pytest.mark.parametrize(
    "chat_format", [f for f in ONE_PER_FORMAT if f.tool_call != "none"], ids=lambda f: f.name
)
def test_declared_tools_are_found_and_called_in_the_familys_syntax(chat_format) -> None:  # type: ignore[no-untyped-def]
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Find the capital of France"),
    ]
    conversation = _parse(ONE_PER_FORMAT[chat_format], messages, tools=True)
    assert conversation.tools() == [("search", "query")]
    calls = [
        b.text
        for b in load_prior().behaviours(conversation, chat_format.tool_call)
        if b.category == "tool_call"
    ]
    assert calls and all("search" in text for text in calls)


def test_a_family_without_tool_calls_gets_no_tool_call_behaviours() -> None:
    (llama,) = [f for f in ONE_PER_FORMAT if f.tool_call == "none"]
    system = "<tools>\n" + '{"name": "search", "parameters": {"properties": {"query": {}}}}' + "\n</tools>"
    conversation = Conversation.parse(
        f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nsearch for cats<|eot_id|>",
        llama.turn,
        llama.end_of_turn,
        llama.tools,
    )
    assert conversation.last_user == "search for cats" and conversation.tools() == []
    assert not [
        b for b in load_prior().behaviours(conversation, llama.tool_call) if b.category == "tool_call"
    ]
