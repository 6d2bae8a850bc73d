"""Tool-call health of a batch of episodes, overall and per agent (pure).

A reward curve can rise while the tool never fires; these counters make that visible. An episode
"was offered tools" when any of its LLM calls declared at least one tool (the endpoint records
``agl_tinker.tools_offered``); a tool call is one entry of an answer's parsed ``tool_calls``.

Metrics, with ``tools/`` for all episodes and ``tools/agent/<name>/`` for the calls an agent made
(agents named by the ``X-Agent-Name`` header; unnamed calls count only in the overall figures):

- ``calls_per_episode``: tool calls per episode, averaged over the episodes (of that agent);
- ``offered_episodes``: episodes in which tools were offered (to that agent);
- ``no_call_episodes``: of those, episodes without a single tool call (by that agent);
- ``no_call_frac``: ``no_call_episodes / offered_episodes`` (0.0 when none was offered);
- ``parse_failures``: tool calls the policy wrote that did not parse (the endpoint's count per call).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from agl_tinker import spans as S
from agl_tinker.core.types import LLMCall, Reconstruction

PARSE_FAILURES_KEY = S.AGL_TOOL_CALL_PARSE_FAILURES
"""Span attribute: tool calls in the answer that did not parse (written by the endpoint)."""


def tool_calls_in(call: LLMCall) -> int:
    """How many tool calls the answer of ``call`` holds (its recorded completion's ``tool_calls``)."""
    if call.finish_reason not in (None, "tool_calls"):
        return 0  # only tool-call answers carry tool calls: skip decoding the completion
    raw = call.attributes.get(S.AGL_COMPLETION)
    if not isinstance(raw, str):
        return 0
    try:
        completion = json.loads(raw)
    except ValueError:
        return 0
    calls = completion.get("tool_calls") if isinstance(completion, dict) else None
    return len(calls) if isinstance(calls, list) else 0


def tools_offered(call: LLMCall) -> bool:
    value = call.attributes.get(S.AGL_TOOLS_OFFERED)
    return isinstance(value, int) and value > 0


@dataclass
class _Tally:
    episodes: int = 0
    tool_calls: int = 0
    offered: int = 0
    offered_without_call: int = 0
    parse_failures: int = 0

    def add(self, calls: Iterable[LLMCall]) -> None:
        n_calls = offered = 0
        for call in calls:
            n_calls += tool_calls_in(call)
            offered = offered or tools_offered(call)
            failures = call.attributes.get(PARSE_FAILURES_KEY)
            if isinstance(failures, int):
                self.parse_failures += failures
        self.episodes += 1
        self.tool_calls += n_calls
        if offered:
            self.offered += 1
            self.offered_without_call += n_calls == 0

    def metrics(self, prefix: str) -> dict[str, float | int]:
        return {
            f"{prefix}calls_per_episode": self.tool_calls / self.episodes if self.episodes else 0.0,
            f"{prefix}offered_episodes": self.offered,
            f"{prefix}no_call_episodes": self.offered_without_call,
            f"{prefix}no_call_frac": self.offered_without_call / self.offered if self.offered else 0.0,
            f"{prefix}parse_failures": self.parse_failures,
        }


def tool_health_metrics(episodes: Iterable[Reconstruction], prefix: str = "") -> dict[str, float | int]:
    """Tool-call counters of ``episodes`` (one reconstruction per rollout), overall and per agent."""
    overall = _Tally()
    per_agent: dict[str, _Tally] = {}
    for rec in episodes:
        overall.add(rec.calls)
        by_agent: dict[str, list[LLMCall]] = {}
        for call in rec.calls:
            if call.agent_name is not None:
                by_agent.setdefault(call.agent_name, []).append(call)
        for agent, calls in by_agent.items():
            per_agent.setdefault(agent, _Tally()).add(calls)
    metrics = overall.metrics(f"{prefix}tools/")
    for agent in sorted(per_agent):
        metrics.update(per_agent[agent].metrics(f"{prefix}tools/agent/{agent}/"))
    return metrics
