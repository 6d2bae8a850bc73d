"""Checkpoint index and metrics across crashes: no torn record, corrupt checkpoints skipped by name,
no silent restart over an earlier run, no duplicated metrics rows."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from reliability_harness import hello_config, run_hello

from agl_tinker.loop import checkpoints
from agl_tinker.loop.checkpoints import AtomicCheckpointIndex, ResumeError, read_index, truncate_metrics
from agl_tinker.run.claim import ResumeRefused


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(log_path: Path, steps: int, **overrides: Any) -> Any:
    return hello_config(log_path, max_steps=steps, batch_size=2, group_size=4, save_every=1, **overrides)


def _trained_steps(log_path: Path) -> Counter[int]:
    return Counter(r["step"] for r in _rows(log_path / "metrics.jsonl") if "train/datums" in r)


# --------------------------------------------------------------------------------------------- the index


def test_a_write_that_crashes_leaves_the_old_index_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = AtomicCheckpointIndex(tmp_path)
    index.write_checkpoint({"name": "000001", "batch": 1, "state_path": "tinker://r/weights/000001"})
    before = (tmp_path / "checkpoints.jsonl").read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("killed during the write")

    monkeypatch.setattr(checkpoints.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        index.write_checkpoint({"name": "000002", "batch": 2, "state_path": "tinker://r/weights/000002"})
    assert (tmp_path / "checkpoints.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints.jsonl"]  # no temp file left


def test_reading_reports_torn_and_garbage_lines_by_path_and_line(tmp_path: Path) -> None:
    good = {"name": "000001", "batch": 1, "state_path": "tinker://r/weights/000001"}
    (tmp_path / "checkpoints.jsonl").write_text(
        json.dumps(good) + "\n" + "\x00\x00garbage\n" + '[1, 2]\n{"name": "000002", "batch": 2, "sta'
    )
    index = read_index(tmp_path)
    assert [r.name for r in index.records] == ["000001"]
    path = tmp_path / "checkpoints.jsonl"
    assert [p.split(": ", 1)[0] for p in index.problems] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    AtomicCheckpointIndex(tmp_path).write_checkpoint({"name": "000003", "batch": 3, "state_path": "x"})
    assert [r["name"] for r in _rows(path)] == ["000001", "000003"]  # unusable lines do not survive a write


def test_truncating_metrics_drops_redone_steps_and_a_torn_row(tmp_path: Path) -> None:
    rows = [{"step": s, "reward/mean": 0.0} for s in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "rew')
    assert truncate_metrics(tmp_path, 3) == 3
    assert [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [0, 1, 2]


# --------------------------------------------------------------------------------------------- resume


@pytest.fixture
def killed_run(tmp_path: Path) -> tuple[Path, Path]:
    """A 3-step run with a checkpoint after every step, as a kill after step 3's checkpoint leaves it:
    ``checkpoints.jsonl`` ends at batch 3 (the final checkpoint), so a 5-step restart resumes there."""
    log_path, sim_dir = tmp_path / "run", tmp_path / "sim"
    import asyncio

    asyncio.run(run_hello(_config(log_path, 3), sim_dir=sim_dir))
    index = log_path / "checkpoints.jsonl"
    records = _rows(index)
    assert [r["batch"] for r in records] == [1, 2, 3]
    return log_path, sim_dir


def _resume(log_path: Path, sim_dir: Path, steps: int = 5, **overrides: Any) -> Any:
    import asyncio

    return asyncio.run(run_hello(_config(log_path, steps, **overrides), sim_dir=sim_dir))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["torn", "garbage"])
def test_a_damaged_last_index_line_is_reported_and_skipped(
    killed_run: tuple[Path, Path], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    log_path, sim_dir = killed_run
    index = log_path / "checkpoints.jsonl"
    with index.open("a") as f:
        f.write(
            '{"name": "000004", "batch": 4, "state_path": "tinker://' if damage == "torn" else "%%garbage%%\n"
        )
    with caplog.at_level(logging.ERROR, logger="agl_tinker.loop.checkpoints"):
        result = _resume(log_path, sim_dir)
    assert result.start_step == 3
    assert any(f"{index}:4" in r.getMessage() for r in caplog.records), caplog.text
    assert _trained_steps(log_path) == Counter(range(5))  # every step once: none redone twice, none lost


@pytest.mark.slow
def test_a_truncated_latest_state_falls_back_to_the_previous_checkpoint(
    killed_run: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    log_path, sim_dir = killed_run
    latest = _rows(log_path / "checkpoints.jsonl")[-1]
    run_id, _, name = latest["state_path"].removeprefix("tinker://").split("/")
    state = sim_dir / run_id / "weights" / name / "state.pt"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.ERROR, logger="agl_tinker.loop.train"):
        result = _resume(log_path, sim_dir)
    assert result.start_step == 2  # the checkpoint before the damaged one
    assert latest["state_path"] in caplog.text
    assert _trained_steps(log_path) == Counter(range(5))  # step 2 redone once, its old row dropped


@pytest.mark.slow
def test_metrics_without_an_index_refuse_to_start_unless_fresh(killed_run: tuple[Path, Path]) -> None:
    log_path, sim_dir = killed_run
    (log_path / "checkpoints.jsonl").unlink()
    old_metrics = (log_path / "metrics.jsonl").read_text()
    with pytest.raises(ResumeRefused, match=re.escape(str(log_path / "metrics.jsonl"))):
        _resume(log_path, sim_dir)
    assert (log_path / "metrics.jsonl").read_text() == old_metrics  # refused before touching anything
    result = _resume(log_path, sim_dir, steps=2, fresh_start=True)
    assert result.start_step == 0
    assert _trained_steps(log_path) == Counter(range(2))  # the new run's rows only
    kept = [p for p in log_path.iterdir() if p.name.startswith("metrics.jsonl.old-")]
    assert len(kept) == 1 and kept[0].read_text() == old_metrics


@pytest.mark.slow
def test_every_checkpoint_unloadable_refuses_to_start(killed_run: tuple[Path, Path]) -> None:
    log_path, sim_dir = killed_run
    for record in _rows(log_path / "checkpoints.jsonl"):
        run_id, _, name = record["state_path"].removeprefix("tinker://").split("/")
        os.truncate(sim_dir / run_id / "weights" / name / "state.pt", 10)
    with pytest.raises(ResumeError, match=r"no checkpoint listed in .*checkpoints\.jsonl could be loaded"):
        _resume(log_path, sim_dir)
