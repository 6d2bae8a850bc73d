"""The simulated base model's "pretraining": generic chat behaviours with copied slots.

A base model knows how to greet, claim or refuse an identity, ask yes/no questions, guess,
answer with a number and call a declared tool; what it says depends on the conversation only
through generic cues and spans it copies (an induction/copy mechanism). It knows nothing about
any task or reward: training decides which behaviours win.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from importlib import resources
from typing import Any

from fakes.lineup import QWEN_TOOLS, QWEN_TURN

_SLOT = re.compile(r"\[\[(\w+)\]\]")
_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")
_INT = re.compile(r"(?<![\w.])-?\d{1,6}(?![\w.]\d)")
_QUOTED = re.compile(r"[\"“']([^\"”'\n]{1,60})[\"”']")
_IDENTITY = re.compile(
    r"(?:\byou(?:'re| are)|\byour name is|\bcall yourself|\bpretend to be|\bact as)\s+([^.,!?;:\n\"]{1,60})",
    re.IGNORECASE,
)
_REACT_CUE = "final answer:"
"""A prompt asking for the text ReAct format (CrewAI's "Thought: ... Final Answer: ...") contains this."""
_REACT_TOOL = re.compile(r"Tool Name: ([\w.\-]+)\nTool Arguments: \{'(\w+)'")
"""A tool described in ReAct text (CrewAI: ``Tool Name: search`` then ``Tool Arguments: {'query': ...``)."""
REACT_FINAL = "Thought: I now can give a great answer\nFinal Answer: "
_REACT_ACTION = 'Thought: I should use a tool.\nAction: [[tool]]\nAction Input: {"[[arg]]": "[[query]]"}'
_JSON_TOOL_CALL = re.compile(r"\n?<tool_call>.*</tool_call>", re.DOTALL)
_XML_TOOL_CALL = "<tool_call>\n<function=[[tool]]>\n<parameter=[[arg]]>\n[[query]]\n</parameter>\n</function>\n</tool_call>"
"""Qwen3.5's tool-call syntax; prior.json writes Qwen3's JSON one, which :func:`_rewrite_tool_call` rewrites."""
_DSML_TOOL_CALL = (
    '\n\n<｜DSML｜ calls>\n<｜DSML｜ invoke name="[[tool]]">\n'
    '<｜DSML｜ parameter name="[[arg]]" string="true">[[query]]</｜DSML｜ parameter>\n'
    "</｜DSML｜ invoke>\n</｜DSML｜ calls>"
)
"""DeepSeek V4's tool-call syntax: a DSML block, always after a blank line (as its template writes it)."""
_HARMONY_TOOL_CALL = (
    ' to=functions.[[tool]]<|channel|>commentary <|constrain|>json<|message|>{"[[arg]]": "[[query]]"}'
)
"""gpt-oss's tool call: a commentary message to the tool, right after ``<|start|>assistant``. Text
before the call would be a message of its own (a preamble), so a harmony call has none."""
RAW_QUERY_SYNTAXES = ("xml", "dsml")
"""Tool-call syntaxes whose argument values are raw text, not JSON string text."""


def _rewrite_tool_call(text: str, syntax: str) -> str:
    """A tool-call template (prior.json writes Qwen3's JSON syntax) in ``syntax``'s."""
    before = _JSON_TOOL_CALL.split(text, maxsplit=1)[0]
    if syntax == "xml":  # a blank line after visible content, as Qwen3.5's template writes it
        return (before + "\n\n" if before.strip() else "") + _XML_TOOL_CALL
    if syntax == "dsml":
        return before + _DSML_TOOL_CALL
    if syntax == "harmony":
        return _HARMONY_TOOL_CALL
    return text


@dataclasses.dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclasses.dataclass(frozen=True)
class Conversation:
    """The chat a prompt renders, parsed back from its text in the model's chat format.

    ``tools_pattern``: a regex whose first group holds the declared tools (see
    ``fakes.lineup.ChatFormat.tools``).
    """

    messages: tuple[Message, ...]
    tools_pattern: str = QWEN_TOOLS

    @classmethod
    def parse(
        cls,
        text: str,
        turn: str = QWEN_TURN,
        end_of_turn: str = "<|im_end|>",
        tools: str = QWEN_TOOLS,
        roles: tuple[tuple[str, str], ...] = (),
    ) -> Conversation:
        """Each match of ``turn`` (a regex with ``role`` and ``content`` groups; a content group
        that did not take part reads as empty) is a message; a turn's content stops at
        ``end_of_turn``; a role that one of ``roles``' regexes fully matches is renamed to its
        pair's role. The defaults read Qwen's ``<|im_start|>`` format."""

        def role(name: str) -> str:
            name = name.strip().lower()
            return next((alias for pattern, alias in roles if re.fullmatch(pattern, name)), name)

        messages = [
            Message(role(m.group("role")), (m.group("content") or "").split(end_of_turn)[0].strip())
            for m in re.finditer(turn, text, re.DOTALL)
        ]
        return cls(tuple(messages), tools)

    @property
    def system(self) -> str:
        return "\n".join(m.content for m in self.messages if m.role == "system")

    @property
    def last_user(self) -> str:
        for message in reversed(self.messages):
            if message.role in ("user", "tool"):
                return message.content
        return ""

    @property
    def continues_answer(self) -> bool:
        """Whether the turn the prompt opens follows the assistant's own message (harmony writes
        its analysis and its answer as two messages of one turn)."""
        return (
            len(self.messages) >= 2
            and self.messages[-2].role == self.messages[-1].role == "assistant"
            and not self.messages[-1].content
        )

    def dialogue(self) -> list[Message]:
        return [m for m in self.messages if m.role != "system" and m.content]

    def tools(self) -> list[tuple[str, str]]:
        """(name, first argument name) of each tool declared in the system prompt: each match of a
        pattern with a ``name`` group is one tool (``arg``, when it matched, its first argument);
        otherwise the pattern's first group holds one JSON declaration per line."""
        pattern = re.compile(self.tools_pattern, re.DOTALL)
        if "name" in pattern.groupindex:
            return [
                (m.group("name"), m.groupdict().get("arg") or "query") for m in pattern.finditer(self.system)
            ]
        found: list[tuple[str, str]] = []
        for block in re.findall(self.tools_pattern, self.system, re.DOTALL):
            for line in block.splitlines():
                try:
                    spec = json.loads(line)
                except ValueError:
                    continue
                function = spec.get("function", spec) if isinstance(spec, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    continue
                properties = (function.get("parameters") or {}).get("properties") or {}
                arg = next(iter(properties), "query")
                found.append((function["name"], str(arg)))
        return found

    def react_tools(self) -> list[tuple[str, str]]:
        """(name, first argument name) of each tool the system prompt describes in ReAct text."""
        return list(dict.fromkeys(_REACT_TOOL.findall(self.system)))


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """One candidate answer: its text, where it came from, and its prior logit."""

    text: str
    template: str
    category: str
    fills: tuple[tuple[str, str], ...]
    prior_logit: float
    calls_tool: bool = False  # a tool call in the chat format's own syntax (not ReAct text)


@dataclasses.dataclass(frozen=True)
class Prior:
    categories: dict[str, dict[str, Any]]
    templates: list[dict[str, Any]]
    nouns: list[str]
    limits: dict[str, int]

    def behaviours(self, conversation: Conversation, tool_call: str = "json") -> list[Behaviour]:
        """Every candidate answer with its prior logit; tool calls in ``tool_call`` syntax
        (``json``: Qwen3's, ``xml``: Qwen3.5's, ``dsml``: DeepSeek V4's, ``harmony``: gpt-oss's,
        ``none``: no tool calls).

        A prompt that asks for the text ReAct format (see :data:`_REACT_CUE`) gets the same
        behaviours in that format: answers after ``Thought: ...\nFinal Answer: `` and tool calls
        as ``Action:``/``Action Input:`` lines for the tools it describes in text.
        """
        slots = self._slots(conversation)
        cue_text = (conversation.system + "\n" + conversation.last_user).lower()
        react = _REACT_CUE in cue_text
        if react:
            tools = conversation.react_tools()[:3]
            slots["tool"] = [(name, arg, query) for name, arg in tools for query in slots["query"]]
        category_weight: dict[str, float] = {}
        for template in self.templates:
            category_weight[template["category"]] = category_weight.get(template["category"], 0.0) + float(
                template["weight"]
            )
        out: list[Behaviour] = []
        for template in self.templates:
            spec = self.categories[template["category"]]
            logit = float(spec["logit"])
            if any(cue in cue_text for cue in spec["cues"]):
                logit += float(spec["cue_bonus"])
            logit += math.log(float(template["weight"]) / category_weight[template["category"]])
            text = template["text"]
            calls_tool = template["category"] == "tool_call" and not react
            if react:
                text = _REACT_ACTION if template["category"] == "tool_call" else REACT_FINAL + text
            elif template["category"] == "tool_call":
                if tool_call == "none":
                    continue
                text = _rewrite_tool_call(text, tool_call)
            fillings = _fillings(text, slots, raw_query=tool_call in RAW_QUERY_SYNTAXES and not react)
            if not fillings:
                continue
            share = math.log(len(fillings))
            for filled, fills in fillings:
                behaviour = Behaviour(
                    filled, template["id"], template["category"], fills, logit - share, calls_tool
                )
                out.append(behaviour)
        return out

    def _slots(self, conversation: Conversation) -> dict[str, list[Any]]:
        last = conversation.last_user
        every = "\n".join(m.content for m in conversation.dialogue())
        nouns = _nouns(every, self.nouns, self.limits["nouns_from_context"])
        generic = [n for n in self.nouns[: self.limits["generic_nouns"]] if n not in nouns]
        identity = [_clip_words(m, 4) for m in _IDENTITY.findall(last)]
        quoted = [q.strip() for q in _QUOTED.findall(last) if q.strip()]
        tools = conversation.tools()
        queries = list(dict.fromkeys(nouns[:4] + quoted[:1] + identity[:1] + [_clip_words(last, 6)]))
        queries = [q for q in queries if q][: self.limits["queries"]] or ["information"]
        return {
            "identity": list(dict.fromkeys(i for i in identity if i))[:2],
            "quoted": list(dict.fromkeys(quoted))[:2],
            "a_noun": [_with_article(n) for n in nouns + generic],
            "number": _numbers(last, every, self.limits["numbers"]),
            "tool": [(name, arg, query) for name, arg in tools[:3] for query in queries],
            "query": queries,
        }


def _fillings(
    text: str, slots: dict[str, list[Any]], raw_query: bool = False
) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Each way to fill ``text``'s slots; a tool query goes in as JSON string text unless ``raw_query``."""
    names = list(dict.fromkeys(_SLOT.findall(text)))
    if not names:
        return [(text, ())]
    out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    if set(names) == {"tool", "arg", "query"}:
        for name, arg, query in slots["tool"]:
            values = {"tool": name, "arg": arg, "query": query if raw_query else _json_text(query)}
            out.append((_fill(text, values), (("tool", name), ("query", query))))
        return out
    if len(names) != 1:
        raise ValueError(f"template {text!r} mixes slots {names}")
    name = names[0]
    for value in slots[name]:
        out.append((_fill(text, {name: str(value)}), ((name, str(value)),)))
    return out


def _fill(text: str, values: dict[str, str]) -> str:
    return _SLOT.sub(lambda match: values[match.group(1)], text)


def _json_text(value: str) -> str:
    return json.dumps(value)[1:-1]


def _clip_words(text: str, n: int) -> str:
    words = text.strip().strip("\"'“”").split()
    return " ".join(words[:n]).rstrip(".,!?;:")


def _with_article(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _nouns(text: str, known: list[str], limit: int) -> list[str]:
    """Known nouns in order of last mention (copying favours recent context)."""
    seen: dict[str, int] = {}
    for position, match in enumerate(_WORD.finditer(text.lower())):
        word = match.group(0)
        singular = word[:-1] if word.endswith("s") and word[:-1] in known else word
        if singular in known:
            seen[singular] = position
    return sorted(seen, key=lambda w: -seen[w])[:limit]


def _numbers(last: str, every: str, limit: int) -> list[int]:
    """Numbers to say: copied from the last message and the dialogue, and midpoints between them."""
    recent = [int(x) for x in _INT.findall(last)]
    older = [int(x) for x in _INT.findall(every)]
    out: list[int] = []
    if len(recent) >= 2:
        out.append((min(recent) + max(recent)) // 2)
    pool = list(dict.fromkeys(recent + older[::-1]))
    for i, a in enumerate(pool[:5]):
        for b in pool[i + 1 : 5]:
            out.append((a + b) // 2)
    out = pool[:6] + out
    return list(dict.fromkeys(out))[:limit]


@functools.cache
def load_prior(name: str = "prior.json") -> Prior:
    raw = json.loads(resources.files("fakes.tinker").joinpath("data").joinpath(name).read_text())
    return Prior(raw["categories"], raw["templates"], raw["nouns"], raw["limits"])
