"""A recorded run on disk, made with the real transcript writer: metrics rows and per-step transcripts.

Rollouts are built from spans (``spanfactory``) by the real core, so their rows are what a training
run writes: multi-call conversations with messages, some excluded (no reward), some drifting.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentlightning.types import Span
from spanfactory import CallSpec, call_spans, conversation, span_id

from agl_tinker.core.trajectory import RolloutTrajectory, rollout_trajectory
from agl_tinker.viewer.writer import TranscriptWriter


@dataclass(frozen=True)
class Outcome:
    rollout_id: str
    slot: int
    final_status: str
    result: RolloutTrajectory


@dataclass(frozen=True)
class Group:
    group_index: int
    task: dict[str, Any]
    outcomes: tuple[Outcome, ...]


def decode(ids: list[int]) -> str:
    return "".join(f"w{t % 97} " if t % 5 else f"{t % 13}\n" for t in ids)


def rollout(rid: str, reward: float | None, n_calls: int = 3, *, drift: bool = False) -> RolloutTrajectory:
    calls, spans = conversation(
        n_calls, rollout_id=rid, final_reward=reward, with_messages=True, first_prompt=60, answer=24
    )
    if drift:
        spans = drift_last_call(calls, spans, rid)
    return rollout_trajectory(spans, status="succeeded", decode=decode)


def drift_last_call(calls: list[CallSpec], spans: list[Span], rid: str) -> list[Span]:
    """The last call's prompt re-rendered: one token of the history changed (``calls[-1]`` is
    replaced in place); returns ``spans`` with that call's span recorded anew."""
    n_calls = len(calls)
    last = calls[-1]
    bad = [*last.prompt]
    bad[5] += 1
    calls[-1] = dataclasses.replace(last, prompt=bad, prefix_length=None)
    spans = [s for s in spans if s.span_id != span_id(n_calls - 1)]
    spans += call_spans(
        calls[-1],
        "agl",
        span_id=span_id(n_calls - 1),
        rollout_id=rid,
        attempt_id="at-1",
        sequence_id=n_calls,
    )
    return spans


def step_groups(step: int, n_groups: int, group_size: int) -> list[Group]:
    groups = []
    for g in range(n_groups):
        outcomes = []
        for k in range(group_size):
            i = g * group_size + k
            reward = None if i % 7 == 3 else ((i * 31 + step * 7) % 11) / 10
            rid = f"ro-{step}-{i}"
            outcomes.append(Outcome(rid, k, "succeeded", rollout(rid, reward, 2 + i % 3, drift=i % 9 == 5)))
        groups.append(Group(g, {"question": f"question {g} of step {step}"}, tuple(outcomes)))
    return groups


def metrics_row(step: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "step": step,
        "reward/mean": 0.3 + 0.4 * step / (step + 5),
        "excluded/no_reward": 2 + step % 3,
        "align/drift_events": step % 2,
        "time/sampling_s": 1.0 + (step % 4) / 10,
    }
    if step % 5 == 0:
        row["eval/reward/mean"] = 0.2 + 0.5 * step / (step + 8)
    return row


def write_step(
    log_path: Path, step: int, n_groups: int = 4, group_size: int = 4, *, groups: list[Group] | None = None
) -> None:
    """Step ``step``'s transcripts, then its metrics row (the order the loops write them in)."""
    writer = TranscriptWriter(log_path, sample=8, decode=decode)
    writer.write(step, groups if groups is not None else step_groups(step, n_groups, group_size))
    with (log_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(metrics_row(step)) + "\n")


def write_run(log_path: Path, steps: int, n_groups: int = 4, group_size: int = 4) -> None:
    log_path.mkdir(parents=True, exist_ok=True)
    for step in range(steps):
        write_step(log_path, step, n_groups, group_size)
