"""A transcript row as readable text (``agl-tinker dryrun``): the conversation, then what training makes of it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["format_rollout", "message_text"]

_WIDTH = 400
"""Longest line shown per message (the full text is in the JSONL written with ``out=``)."""


def message_text(message: Mapping[str, Any]) -> str:
    """One message on one line: its text, and the tool calls it makes (name and arguments)."""
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        content = json.dumps(content)
    text = " ".join(str(content or "").split())
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, Mapping) else {}
        calls.append(f"[calls {function.get('name')}({function.get('arguments')})]")
    if message.get("role") == "tool":
        text = f"[{message.get('name') or message.get('tool_call_id') or 'tool'} result] {text}"
    line = " ".join([text, *calls] if text else calls)
    return line if len(line) <= _WIDTH else line[:_WIDTH] + " …"


def format_rollout(row: Mapping[str, Any]) -> str:
    """A detailed transcript row as text: header, each call's new messages and its answer, verdict."""
    reward = "none" if row.get("reward") is None else f"{row['reward']:+.3f}"
    head = f"--- task {row.get('group')}.{row.get('slot')}: {json.dumps(row.get('task'), default=str)[:200]}"
    lines = [head]
    for call in row.get("calls", []):
        who = call.get("agent") or ""
        tag = f"call {call['index']}" + (f" [{who}]" if who else "")
        lines.append(f"  · {tag}" + (f" (not trained: {call['problem']})" if call.get("problem") else ""))
        for m in call.get("messages", []):
            lines.append(f"  {m.get('role', '?'):>9}: {message_text(m)}")
        completion = call.get("completion")
        if completion is not None:
            lines.append(f"  {'assistant':>9}: {message_text(completion)}")
    verdict = [f"reward {reward}"]
    if row.get("exclusion"):
        verdict.append(f"EXCLUDED ({row['exclusion']})")
    tools = row.get("tools") or {}
    if tools.get("offered"):
        verdict.append(f"tool calls {tools.get('calls', 0)}")
    if tools.get("parse_failures"):
        verdict.append(f"unparsed tool calls {tools['parse_failures']}")
    lines.append("  => " + ", ".join(verdict))
    for d in row.get("drift_reports", []):
        lines.append(
            f"  DRIFT at call {d['call']}, prompt token {d['token_index']}: expected "
            f"{d.get('expected_text')!r}, got {d.get('actual_text')!r} ({d['kind']})"
        )
    for g in row.get("gap_reports", []):
        lines.append(
            f"  LOST CALL before call {g['call']} (prefix of {g['claimed_prefix']} tokens unrecorded)"
        )
    return "\n".join(lines)
