"""The training loops write a transcript file per step (synchronous and asynchronous), offline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from async_run import hello_config, run_hello

from agl_tinker.examples.hello.agent import hello_dataset
from agl_tinker.viewer.dryrun import DryRun, dry_run, load_agent, score
from agl_tinker.viewer.writer import transcript_file


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_step_writes_its_transcripts(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluation = {"val_fraction": 0.1, "eval_every": 2} if mode == "sync" else {}
    config = hello_config(tmp_path, mode, steps=2, transcripts_per_step=3, **evaluation)
    result = asyncio.run(run_hello(config))
    for step in (0, 1):
        rows = [json.loads(line) for line in transcript_file(tmp_path, step).read_text().splitlines()]
        assert len(rows) == 32  # 8 tasks x 4 rollouts: every rollout has its summary row
        detailed = [r for r in rows if "calls" in r]
        assert 3 <= len(detailed) <= 6
        call = detailed[0]["calls"][0]
        assert call["trained"] and call["response"] and len(call["logprobs"]) == len(call["response"])
        assert all(str(t) in detailed[0]["token_text"] for t in call["prompt"] + call["response"])
        assert {r["step"] for r in rows} == {step}
        assert result.steps[step]["transcripts/bytes"] == transcript_file(tmp_path, step).stat().st_size
    if mode == "async":  # one step off policy: step 1 may train on calls sampled by version 0
        assert {r["staleness"] for r in rows} <= {0, 1}
    if mode == "sync":  # validation rollouts (before step 0, and after the last step) have their own files
        for step in (0, 2):
            rows = [
                json.loads(line)
                for line in transcript_file(tmp_path, step, kind="eval").read_text().splitlines()
            ]
            assert rows and all(r["step"] == step for r in rows)
            assert result.evals[step // 2]["eval/transcripts/bytes"] > 0
    if mode == "sync":  # the run's last checkpoint evaluates like any agent's
        monkeypatch.setenv("AGL_TINKER_SIM_DIR", str(tmp_path / "sim"))
        agent = load_agent("agl_tinker.examples.hello.agent:hello_rollout")
        run = DryRun(config.model_name, checkpoint=str(tmp_path), temperature=0.0, max_tokens=32)
        rows = asyncio.run(dry_run(agent, hello_dataset("val")[:3], run))
        report = score(rows)
        assert report.scored == 3 and report.mean is not None and len(report.per_task) == 3
