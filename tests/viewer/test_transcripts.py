"""Per-step transcripts: what the rows hold, which rollouts get their calls, and the caps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from recorded_run import Group, Outcome, drift_last_call
from spanfactory import conversation

from agl_tinker.core.trajectory import rollout_trajectory
from agl_tinker.loop.config import ConfigError, TrainConfig
from agl_tinker.viewer.transcripts import pick_detailed, step_transcripts
from agl_tinker.viewer.writer import TranscriptWriter, transcript_file


def _rollout(rid: str, reward: float | None, n_calls: int = 3, *, drift: bool = False) -> Any:
    calls, spans = conversation(n_calls, rollout_id=rid, final_reward=reward, with_messages=True)
    if drift:
        spans = drift_last_call(calls, spans, rid)
    return calls, rollout_trajectory(spans, status="succeeded", decode=lambda ids: " ".join(map(str, ids)))


def _group(index: int, rewards: Sequence[float | None], **kw: Any) -> Group:
    outcomes = []
    for slot, reward in enumerate(rewards):
        _, rt = _rollout(f"ro-{index}-{slot}", reward, **kw)
        outcomes.append(Outcome(f"ro-{index}-{slot}", slot, "succeeded", rt))
    return Group(index, {"q": f"task {index}"}, tuple(outcomes))


def test_rows_summarise_every_rollout_and_advantages_are_centred_per_group() -> None:
    groups = [_group(0, [1.0, 0.0, 0.5, None]), _group(1, [0.2, 0.2])]
    rows = step_transcripts(3, groups, sample=2)
    assert [(r["group"], r["slot"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    excluded = rows[3]
    assert (
        excluded["exclusion"] == "no_reward" and excluded["reward"] is None and excluded["advantage"] is None
    )
    assert not excluded["trained"]
    assert abs(sum(r["advantage"] for r in rows[:3])) < 1e-6
    assert rows[0]["advantage"] == 0.5 and rows[1]["advantage"] == -0.5
    assert rows[0]["task"] == {"q": "task 0"} and rows[0]["staleness"] == 3  # version 0 sampled, step 3
    assert rows[0]["tools"] == {"calls": 0, "offered": 0, "parse_failures": 0}


def test_a_detailed_row_rebuilds_each_calls_tokens_and_marks_the_trained_ones() -> None:
    calls, rt = _rollout("ro-1", 1.0, n_calls=3)
    rows = step_transcripts(
        0, [Group(0, {}, (Outcome("ro-1", 0, "succeeded", rt),))], sample=1, token_text=str
    )
    detail = rows[0]["calls"]
    sequence: list[int] = []
    for spec, call in zip(calls, detail, strict=True):
        assert call["prompt_from"] == len(sequence)  # each prompt extends the sequence so far
        sequence += call["prompt"]
        assert sequence == spec.prompt
        assert call["response"] == spec.response and call["trained"]
        assert call["logprobs"] == [round(x, 4) for x in spec.logprobs or []]
        sequence += call["response"]
    assert detail[-1]["reward"] == 1.0 and detail[0]["reward"] == 0.0
    assert set(rows[0]["token_text"]) == {str(t) for t in sequence}
    # messages are stored once: the second call shows only what came after the first one's answer
    # (the answer itself, sent back by the agent, is the first call's completion)
    assert detail[0]["messages_from"] == 0 and len(detail[0]["messages"]) == 2
    assert detail[0]["completion"] is not None
    assert detail[1]["messages_from"] == 3 and [m["content"] for m in detail[1]["messages"]] == ["o0"]


def test_drift_is_reported_at_the_first_differing_token() -> None:
    _, rt = _rollout("ro-d", 1.0, n_calls=3, drift=True)
    rows = step_transcripts(0, [Group(0, {}, (Outcome("ro-d", 0, "succeeded", rt),))], sample=1)
    assert rows[0]["drift"] == 1 and rows[0]["sequences"] == 2
    (report,) = rows[0]["drift_reports"]
    assert report["call"] == 2 and report["token_index"] == 5 and report["kind"] == "drift"
    assert rows[0]["calls"][2]["prompt_from"] == 0  # a new sequence starts with its whole prompt


def test_excluded_and_drifting_rollouts_are_always_detailed() -> None:
    groups = [_group(0, [1.0, 0.5, 0.0, 0.25]), _group(1, [None, 1.0]), _group(2, [1.0], drift=True)]
    rows = step_transcripts(0, groups, sample=2)
    detailed = [(r["group"], r["slot"]) for r in rows if "calls" in r]
    assert (1, 0) in detailed and (2, 0) in detailed
    assert len(detailed) == 4  # the two flagged ones, then the best and the worst of the others
    others = [r["reward"] for r in rows if "calls" in r and r["exclusion"] is None and not r["drift"]]
    assert sorted(others) == [0.0, 1.0]


@given(
    rewards=st.lists(st.one_of(st.none(), st.floats(-1, 1)), min_size=0, max_size=30),
    drifting=st.sets(st.integers(0, 29)),
    sample=st.integers(0, 8),
)
def test_pick_detailed_flags_first_and_never_more_than_twice_the_sample(
    rewards: list[float | None], drifting: set[int], sample: int
) -> None:
    rows = [
        {"reward": r, "exclusion": "no_reward" if r is None else None, "drift": int(i in drifting), "gaps": 0}
        for i, r in enumerate(rewards)
    ]
    picked = pick_detailed(rows, sample)
    assert len(picked) == len(set(picked)) <= 2 * sample
    flagged = [i for i, r in enumerate(rows) if r["exclusion"] or r["drift"]]
    assert picked[: min(sample, len(flagged))] == flagged[:sample]
    assert len(picked) == min(len(rows), min(sample, len(flagged)) + sample)


@settings(max_examples=15, deadline=None)
@given(max_bytes=st.integers(2_000, 60_000), n_groups=st.integers(1, 4))
@example(max_bytes=19_594, n_groups=2)  # the "detail_cut" markers of later rows passed the cap
@example(max_bytes=11_021, n_groups=2)
def test_a_steps_file_never_passes_its_cap(tmp_path_factory: Any, max_bytes: int, n_groups: int) -> None:
    log = tmp_path_factory.mktemp("t")
    groups = [_group(g, [1.0, 0.0, None]) for g in range(n_groups)]
    writer = TranscriptWriter(log, sample=8, decode=lambda ids: f"<{ids[0]}>", max_bytes=max_bytes)
    written = writer.write(7, groups)
    data = transcript_file(log, 7).read_bytes()
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert len(rows) == 3 * n_groups  # every rollout keeps its summary row
    assert written["transcripts/bytes"] == len(data)
    if len(data) > max_bytes:  # only when the summaries alone pass it: no row keeps its calls
        assert all("calls" not in r for r in rows)
    assert any("calls" in r or r.get("detail_cut") for r in rows)


def test_writer_writes_nothing_when_off_and_replaces_a_redone_step(tmp_path: Path) -> None:
    assert TranscriptWriter(tmp_path, sample=0).write(0, [_group(0, [1.0])]) == {}
    assert not (tmp_path / "transcripts").exists()
    writer = TranscriptWriter(tmp_path, sample=2)
    writer.write(0, [_group(0, [1.0, 0.0])])
    writer.write(0, [_group(0, [1.0])])
    assert len(transcript_file(tmp_path, 0).read_text().splitlines()) == 1
    writer.write(1, [_group(0, [1.0])], policy="alice")
    assert transcript_file(tmp_path, 1, "alice").exists()
    assert json.loads(transcript_file(tmp_path, 1, "alice").read_text())["policy"] == "alice"


def test_validation_rollouts_go_to_their_own_file_and_metrics(tmp_path: Path) -> None:
    written = TranscriptWriter(tmp_path, sample=2).write(4, [_group(0, [1.0])], kind="eval")
    assert set(written) == {"eval/transcripts/bytes", "eval/time/transcripts_s"}
    assert transcript_file(tmp_path, 4, kind="eval").name == "eval_000004.jsonl"
    assert not transcript_file(tmp_path, 4).exists()


def test_a_negative_sample_is_refused_by_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="transcripts_per_step"):
        TrainConfig(log_path=str(tmp_path), transcripts_per_step=-1)
    TrainConfig(log_path=str(tmp_path), transcripts_per_step=0)  # 0: transcripts off
