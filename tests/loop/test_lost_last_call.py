"""A rollout whose *last* call's span never reached the store is excluded as a gap, not trained
(issue 31): no later call claims its tokens, but the endpoint counted the call it served."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import Span
from async_run import hello_config, run_hello

from agl_tinker.examples.clients import openai_client
from agl_tinker.examples.hello.agent import HelloTask, prompt_for, score
from agl_tinker.spans import LLM_CALL_SPAN_NAME

LOSE = 3
"""Rollouts whose second (last) call's span the store acknowledges but does not keep."""


class LosesLastCallSpans(InMemoryLightningStore):
    """Drops the second LLM-call span of the first :data:`LOSE` rollouts that write one."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}
        self.lost: set[str] = set()

    def _keep(self, span: Span) -> bool:
        if span.name != LLM_CALL_SPAN_NAME:
            return True
        n = self.seen[span.rollout_id] = self.seen.get(span.rollout_id, 0) + 1
        if n == 2 and len(self.lost) < LOSE:
            self.lost.add(span.rollout_id)
            return False
        return True

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        kept = [s for s in spans if self._keep(s)]
        return await super().add_many_spans(kept) if kept else []


async def two_calls(task: HelloTask, llm: agl.LLM) -> float:
    """Hello, then a follow-up call in the same conversation; the first answer is scored."""
    client = openai_client(llm.get_base_url(), llm.api_key)
    messages: list[Any] = [{"role": "user", "content": prompt_for(task["identity"])}]
    first = await client.chat.completions.create(model=llm.model, messages=messages, max_tokens=16)
    answer = first.choices[0].message.content or ""
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Again."}]
    await client.chat.completions.create(model=llm.model, messages=messages, max_tokens=16)
    return score(answer, task["identity"])


@pytest.mark.slow
def test_a_rollout_whose_last_span_was_lost_is_excluded_as_a_gap(tmp_path: Path) -> None:
    store = LosesLastCallSpans()
    config = hello_config(tmp_path, "sync", 1)
    result = asyncio.run(run_hello(config, agent=two_calls, store=store))  # type: ignore[arg-type]
    (step,) = result.steps
    assert len(store.lost) == LOSE
    assert step["excluded/gap"] == LOSE and step["align/gaps"] == LOSE
    assert step["rollouts/total"] == 32 and step["train/datums"] > 0
