"""Asynchronous and streaming training with the simulator: the staleness bound holds, every group is
accounted for exactly once (also across a SIGKILL and resume), off-policy data is importance-weighted,
and one step off policy learns Hello as well as the synchronous loop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from async_run import BATCH, hello_config, run_hello, with_stragglers
from tinker_cookbook.checkpoint_utils import CheckpointRecord
from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

from agl_tinker.dispatch.continuous import FinishedGroup, GroupRequest
from agl_tinker.examples.hello.agent import hello_dataset, hello_rollout
from agl_tinker.loop.checkpoints import ResumeError
from agl_tinker.loop.config import ConfigError, PolicyConfig, TrainConfig
from agl_tinker.loop.ledger import FINAL_OUTCOMES, LEDGER_FILE, GroupLedger, effective_ledger

# Our loop calls the SDK through its non-deprecated methods (the `*_async` spellings are
# deprecated; see agl_tinker/tinker_retry.py): a FutureWarning here is a regression.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
# sampling ~ training per step, so the pipeline really runs one step off policy
BALANCED = {"sample_ttft_s": 0.15, "sample_token_s": 0.005, "train_token_s": 0.0003, "save_sampler_s": 0.02}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _assert_every_group_once(log_path: Path, n_groups: int) -> list[dict[str, Any]]:
    """Each key of the run ends exactly once as trained, excluded or stale-dropped; none is lost."""
    ledger = effective_ledger(log_path)
    final = [line for line in ledger if line["outcome"] in FINAL_OUTCOMES]
    by_key = Counter(line["key"] for line in final)
    assert sorted(by_key) == list(range(n_groups)), sorted(set(range(n_groups)) - set(by_key))
    assert max(by_key.values()) == 1, [k for k, n in by_key.items() if n > 1]
    return ledger


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"async_config": AsyncConfig(max_steps_off_policy=1, groups_per_batch=4)}, "groups_per_batch"),
        ({"async_config": AsyncConfig(max_steps_off_policy=-1, groups_per_batch=8)}, "max_steps_off_policy"),
        (
            {"stream_minibatch_config": StreamMinibatchConfig(groups_per_batch=8, num_minibatches=3)},
            "minibatch",
        ),
        (
            {
                "stream_minibatch_config": StreamMinibatchConfig(groups_per_batch=8, num_minibatches=2),
                "num_substeps": 3,
            },
            "num_substeps",
        ),
        (  # a policy's own num_substeps is split by the same rule (it was not checked)
            {
                "stream_minibatch_config": StreamMinibatchConfig(groups_per_batch=8, num_minibatches=2),
                "policies": {"a": PolicyConfig(), "b": PolicyConfig(num_substeps=3)},
            },
            r"policies\['b'\]\.num_substeps \(3\)",
        ),
    ],
)
def test_overlap_configs_that_do_not_fit_the_batch_are_refused(
    tmp_path: Path, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(log_path=str(tmp_path), batch_size=8, **overrides)


def test_synchronous_stays_the_default(tmp_path: Path) -> None:
    config = TrainConfig(log_path=str(tmp_path))
    assert config.async_config is None and config.stream_minibatch_config is None


# --------------------------------------------------------------------------------------------- ledger


def _group(key: int, attempt: int = 0) -> FinishedGroup[Any]:
    return FinishedGroup(GroupRequest(key, {"identity": str(key)}, attempt), (), 0.0, 0.0)


def test_checkpoint_records_done_groups_and_a_restart_supersedes_redone_steps(tmp_path: Path) -> None:
    ledger = GroupLedger(tmp_path / LEDGER_FILE, start_step=0)
    ledger.record(0, _group(0), "trained", 0)
    ledger.record(0, _group(2), "excluded", 0)
    ledger.record(0, _group(1), "stale_requeued", 2)
    ledger.record(1, _group(1, 1), "stale_dropped", 2)
    ledger.record(1, _group(4), "trained", 1)
    state = ledger.loop_state()
    assert state == {"async_done_below": 3, "async_done": [4]}
    ledger.record(2, _group(5), "trained", 1)  # after the checkpoint: lost with the kill

    resumed = GroupLedger.resume(tmp_path / LEDGER_FILE, 2, BATCH, state)
    assert resumed.done == {0, 1, 2, 4}
    resumed.record(2, _group(3), "trained", 0)
    resumed.record(2, _group(5), "trained", 0)
    kept = effective_ledger(tmp_path)
    assert [(line["key"], line["outcome"]) for line in kept] == [
        (0, "trained"),
        (2, "excluded"),
        (1, "stale_requeued"),
        (1, "stale_dropped"),
        (4, "trained"),
        (3, "trained"),
        (5, "trained"),
    ]
    # a synchronous checkpoint (no ledger keys) means whole batches done
    assert GroupLedger.resume(tmp_path / "x.jsonl", 2, BATCH, {}).done == set(range(2 * BATCH))


# --------------------------------------------------------------------------------------------- async runs


@pytest.mark.slow
def test_stragglers_are_requeued_or_dropped_never_trained_beyond_the_bound(tmp_path: Path) -> None:
    """Rollouts of one task in three take 3 s while a step takes about 1 s: their groups come back
    more than one version behind. They are requeued while the run has undispatched groups, dropped
    after that, and counted; every trained group is within the bound."""
    steps = 6
    config = hello_config(tmp_path, "async", steps)
    result = asyncio.run(run_hello(config, agent=with_stragglers(hello_rollout, 3.0, 3)))  # type: ignore[arg-type]
    ledger = _assert_every_group_once(tmp_path, steps * BATCH)
    outcomes = Counter(line["outcome"] for line in ledger)
    assert outcomes["stale_requeued"] > 0 and outcomes["trained"] > 0, outcomes
    for line in ledger:
        if line["outcome"] == "trained":
            assert line["staleness"] <= 1, line
        if line["outcome"].startswith("stale"):
            assert line["staleness"] > 1, line
    for s in result.steps:
        assert s["staleness/group_max"] <= 1 and s["staleness/call_max"] <= 1, s
        for key in ("time/trainer_idle_frac", "time/sampler_idle_frac"):
            assert 0.0 <= s[key] <= 1.0, (key, s[key])
    assert sum(s["async/stale_requeued"] for s in result.steps) == outcomes["stale_requeued"]
    assert sum(s["async/stale_dropped"] for s in result.steps) == outcomes["stale_dropped"]
    trained = sum(s["groups/trained"] for s in result.steps)
    assert trained == outcomes["trained"]


@pytest.mark.slow
def test_pacing_drops_no_group_and_keeps_staleness_within_its_bound(tmp_path: Path) -> None:
    """The stragglers of the test above, paced one step ahead: nothing is requeued or dropped,
    every group is trained once (or excluded), none more than one version behind."""
    steps = 6
    config = hello_config(tmp_path, "paced", steps)
    result = asyncio.run(run_hello(config, agent=with_stragglers(hello_rollout, 3.0, 3)))  # type: ignore[arg-type]
    ledger = _assert_every_group_once(tmp_path, steps * BATCH)
    assert {line["outcome"] for line in ledger} <= {"trained", "excluded"}, Counter(
        line["outcome"] for line in ledger
    )
    assert max(line["staleness"] for line in ledger) <= 1
    assert any(s["staleness/group_max"] == 1 for s in result.steps)  # it did run ahead
    for s in result.steps:
        assert s["async/stale_requeued"] == s["async/stale_dropped"] == 0, s
        assert s["staleness/group_max"] <= 1 and s["staleness/call_max"] <= 1, s


@pytest.mark.slow
def test_one_step_off_policy_is_importance_weighted_and_learns_like_sync(tmp_path: Path) -> None:
    """Same seed, same cost model: the async run trains on samples one version old (their
    sampled logprobs differ from the trainer's: the IS ratio is not 1), and learns as far: its
    greedy validation on the 24 held-out identities ends within 0.25 of the sync run's, at least
    1.0 above where it started.

    Validation, not the training reward, compares the two: that reward is sampled (temperature
    1, unseeded), and its last-3-steps mean, async minus sync, once held to >= -0.25, read -0.24
    to -0.01 over 7 pairs of runs (load 2.5-4.4). The validation went -1 -> +1 in every run of
    both modes (by step 5 in each)."""
    steps = 10
    validation: dict[str, dict[int, float]] = {}
    runs = {}
    for mode in ("sync", "async"):
        config = hello_config(tmp_path / mode, mode, steps, seed=1, eval_every=steps)
        runs[mode] = result = asyncio.run(run_hello(config, costs=BALANCED, val_tasks=hello_dataset("val")))
        assert len(result.rewards) == steps
        validation[mode] = {e["step"]: e["eval/reward/mean"] for e in result.evals}
        assert validation[mode].keys() == {0, steps}, validation
    late = runs["async"].steps[2:]
    assert any(s["staleness/call_max"] == 1 for s in late), [s["staleness/call_max"] for s in late]
    for s in runs["async"].steps:
        # half the mean squared (sampled - trainer) logprob difference over the trained tokens
        kl = s["optim/kl_sample_train_v2"]
        if s["staleness/call_max"] == 0:
            assert kl < 1e-10, s  # on-policy: sampler and trainer logprobs agree (float32 rounding)
        elif s["staleness/call_mean"] == 1:
            assert kl > 1e-8, s  # stale samples: the loss sees their own (old) logprobs
    assert validation["async"][steps] >= validation["async"][0] + 1.0, validation
    assert validation["async"][steps] >= validation["sync"][steps] - 0.25, validation
    rewards = runs["async"].rewards  # the sampled reward rises too (0.79-1.14 in the 7 runs)
    assert sum(rewards[-3:]) / 3 > sum(rewards[:2]) / 2 + 0.2, rewards
    _assert_every_group_once(tmp_path / "async", steps * BATCH)


@pytest.mark.slow
def test_stream_minibatches_train_every_group_with_the_current_weights(tmp_path: Path) -> None:
    steps = 3
    result = asyncio.run(run_hello(hello_config(tmp_path, "stream", steps), costs=BALANCED))
    assert [s["step"] for s in result.steps] == list(range(steps))
    for s in result.steps:
        assert s["staleness/call_max"] == 0 and s["calls/off_policy"] == 0
        assert s["groups/trained"] + s["groups/dropped"] == BATCH
        assert s["optim/kl_sample_train_v2"] < 1e-10
    _assert_every_group_once(tmp_path, steps * BATCH)


# --------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["async", "paced_inflight_sr"])
def test_async_resume_after_sigkill_trains_no_group_twice(tmp_path: Path, mode: str) -> None:
    """Kill the async run right after its step-2 checkpoint, while groups are in flight; the restart
    resumes at step 2, re-runs the groups that were in flight or waiting, and skips the done ones.
    Also in every new mode at once (one run, to keep CI short): paced (``sampling_steps_ahead``), with
    in-flight clients and ``stable_reinforce`` (the restart is a new session: the groups it trains were
    all sampled, and their ids recorded, in it)."""
    log_path = tmp_path / "run"
    steps, save_every = 5, 2
    cmd = [
        sys.executable,
        str(Path(__file__).parents[1] / "async_run.py"),
        str(log_path),
        str(steps),
        str(save_every),
        mode,
    ]
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), ENV.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = log_path / "checkpoints.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (checkpoints.exists() and checkpoints.read_text().strip()):
            if proc.poll() is not None:
                raise AssertionError(f"run exited before its first checkpoint: {proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (first,) = _rows(checkpoints)
    assert first["batch"] == 2 and "async_done_below" in first
    killed = _rows(log_path / LEDGER_FILE)
    assert {line["run_start"] for line in killed} == {0}

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = _rows(log_path / LEDGER_FILE)
    assert {line["run_start"] for line in lines} == {0, 2}
    ledger = _assert_every_group_once(log_path, steps * BATCH)
    # groups done at the checkpoint are not rolled out again; the others are
    done_at_checkpoint = set(range(first["async_done_below"])) | set(first["async_done"])
    resumed_keys = {line["key"] for line in ledger if line["run_start"] == 2}
    assert not (resumed_keys & done_at_checkpoint)
    metrics_steps = [r["step"] for r in _rows(log_path / "metrics.jsonl") if "reward/mean" in r]
    assert Counter(metrics_steps)[0] == 1 and Counter(metrics_steps)[1] == 1  # before the checkpoint: once
    assert sorted(set(metrics_steps)) == list(range(steps))
    assert [c["batch"] for c in _rows(checkpoints)] == [2, 4, 5]
    rows = [r for r in _rows(log_path / "metrics.jsonl") if "reward/mean" in r]
    if mode != "async":  # paced: nothing requeued or dropped, before or after the kill
        assert {line["outcome"] for line in ledger} <= {"trained", "excluded"}, ledger
        assert all(r["async/stale_requeued"] == r["async/stale_dropped"] == 0 for r in rows)
    if mode == "paced_inflight_sr":  # every datum named this session's recorded sequences
        assert all(r["datums/unrecorded"] == r["datums/expired"] == 0 for r in rows), rows
        assert sum(r["train/datums"] for r in rows if r["step"] >= 2) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_an_async_checkpoint_is_not_resumed_by_another_schedule(tmp_path: Path, stream: bool) -> None:
    """Its done groups are not whole batches: a synchronous or streamed resume of step 2 would
    train group 16 (done) again and never roll out group 9 (not done). Before, it did both."""
    from agl_tinker.loop.schedules import pick_schedule

    ledger = GroupLedger(tmp_path / LEDGER_FILE, start_step=0)
    for key in [*range(9), *range(10, 17)]:  # 16 groups trained in 2 steps, group 9 requeued
        ledger.record(0, _group(key), "trained", 0)
    record = CheckpointRecord(name="000002", batch=2, extra=ledger.loop_state())
    overrides: dict[str, Any] = {}
    if stream:
        overrides["stream_minibatch_config"] = StreamMinibatchConfig(
            groups_per_batch=BATCH, num_minibatches=1
        )
    run: Any = SimpleNamespace(config=TrainConfig(log_path=str(tmp_path), batch_size=BATCH, **overrides))
    with pytest.raises(ResumeError, match=r"asynchronous run.*async_config"):
        pick_schedule(run, record, 2)
    whole = GroupLedger.resume(tmp_path / LEDGER_FILE, 2, BATCH, {})  # a synchronous checkpoint
    whole_record = CheckpointRecord(name="000002", batch=2, extra=whole.loop_state())
    assert pick_schedule(run, whole_record, 2) is not None
