"""One text corpus for the offline tokenizers' agreement tests (Qwen, Llama 3, DeepSeek, and any
family added later): plain text every family shares, text with runs of whitespace, and each chat
format's own markup. A family's test builds its corpus with :func:`corpus`.

The texts cover chat markup, tool calls, JSON, code (indentation, tabs, CRLF), CJK and other
non-Latin scripts, combining marks, emoji sequences, a no-break space and numbers.
"""

from __future__ import annotations

PLAIN = [
    "Hello world! How are you today?",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}',
    "def fib(n: int) -> int:\n\treturn n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "你好，世界！人力资源管理和中华人民共和国。",
    "日本語のテキストとカタカナ、한국어 텍스트, русский текст, Ελληνικά, עברית, العربية, हिन्दी",
    "café naïve e\u0301 Ångström 😀 👍🏽 👨‍👩‍👧,\u00a0non-breaking",
    "1234567890 3.14159 -42 1e10 $100.00 50%",
]
"""Text without a run of several whitespace characters before a non-space."""

SPACE_RUNS = [
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }  // C\r\n\tx += 0x1F;',
    "café naïve e\u0301 Ångström 😀 👍🏽 👨‍👩‍👧 \u00a0non-breaking",
]
"""Text with runs of whitespace before a non-space (indentation, two spaces, space + no-break space):
the pretokenizer regexes' ``\\s+(?!\\S)`` case."""

CHATML = [
    "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n<|im_start|>assistant\n",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
    "<think>\nThe user wants a number.\n</think>\n\n42",
]
"""Qwen3 / Qwen3.5 chat markup: ChatML turns, JSON and XML tool calls, thinking."""

LLAMA3_CHAT = [
    "<|start_header_id|>user<|end_header_id|>\n\nWhat's the weather in Paris?<|eot_id|>",
]
"""Llama 3 chat markup."""

DEEPSEEK_CHAT = [
    "<｜begin▁of▁sentence｜><｜System｜>Reasoning Effort: 75\n\nBe brief.<｜User｜>What is 2+2?<｜Assistant｜><think>",
    "<think>The user wants a number.</think>42<｜end▁of▁sentence｜>",
    '\n\n<｜DSML｜ calls>\n<｜DSML｜ invoke name="search">\n'
    '<｜DSML｜ parameter name="query" string="true">Paris</｜DSML｜ parameter>\n</｜DSML｜ invoke>\n</｜DSML｜ calls>',
]
"""DeepSeek V4 chat markup: special tokens, thinking, DSML tool calls."""


def corpus(markup: list[str], *, space_runs: bool = True) -> list[str]:
    """The corpus for one chat format: the shared plain texts, the runs of whitespace unless
    ``space_runs`` is false (for an oracle that splits them otherwise), then ``markup``."""
    return [*PLAIN, *(SPACE_RUNS if space_runs else []), *markup]
