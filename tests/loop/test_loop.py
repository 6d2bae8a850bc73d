"""The training loop end to end, offline: configuration, one-process learning, resume after a kill, split mode."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agl_tinker.algorithm import fit
from agl_tinker.core.rewards import RewardMode
from agl_tinker.examples.hello.agent import hello_agent, hello_dataset
from agl_tinker.loop.config import ConfigError, TrainConfig
from agl_tinker.loop.data import DatasetError, build_datasets

AGL_TINKER = str(Path(sys.executable).with_name("agl-tinker"))
ENV = {
    **os.environ,
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("group_size", 0),
        ("learning_rate", 0.0),
        ("max_steps", 0),
        ("val_fraction", 1.0),
        ("endpoint_port", 70000),
        ("min_valid_per_group", 9),
        ("min_valid_per_group", -1),
        ("batch_timeout_s", 0.0),
        ("max_context_tokens", 0),
        ("loss_fn", "ppo2"),
        ("endpoint_mode", "leen"),
        ("reward_mode", "last"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(log_path=str(tmp_path), **{field: value})


def test_reward_mode_given_as_a_string_reaches_the_core_as_the_enum(tmp_path: Path) -> None:
    """The core compares modes by identity: ``"sum"`` used to behave as neither sum nor final."""
    for mode in RewardMode:
        config = TrainConfig(log_path=str(tmp_path), reward_mode=str(mode.value))  # type: ignore[arg-type]
        assert config.reward_options().mode is mode


def test_missing_task_field_fails_before_training() -> None:
    with pytest.raises(DatasetError, match="identity"):
        build_datasets(
            [{"identity": "1"}, {"name": "2"}], batch_size=2, group_size=2, required_fields=("identity",)
        )


# --------------------------------------------------------------------------------------------- one process


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Hello, one command (store server, algorithm, 2 runner processes), 12 seeded steps."""
    log_path = tmp_path_factory.mktemp("hello-one-process")
    config = TrainConfig(
        log_path=str(log_path),
        max_steps=12,
        batch_size=8,
        group_size=4,
        learning_rate=3e-2,
        lora_rank=8,
        eval_every=6,
        save_every=6,
        max_tokens=32,
        rollout_timeout_s=60.0,
    )
    return fit(
        hello_agent,
        config,
        hello_dataset("train"),
        hello_dataset("val"),
        n_runners=2,
        required_fields=("identity",),
    )


@pytest.mark.slow
def test_one_process_writes_metrics_checkpoints_and_curve(one_process_run: Any) -> None:
    result = one_process_run
    assert [s["step"] for s in result.steps] == list(range(12))
    for key in (
        "reward/mean",
        "rollouts/succeeded_frac",
        "rollouts/failed_frac",
        "rollouts/no_reward_frac",
        "rollouts/excluded_frac",
        "align/drift_events",
        "align/sequences_per_trajectory",
        "calls/off_policy",
        "time/sampling_s",
        "time/waiting_s",
        "time/training_s",
        "train/datums",
        "spans/dropped",
        "spans/failed",
        "align/gaps",
        "tool_calls/parse_failures",
    ):
        assert key in result.steps[0], key
    first = result.steps[0]
    assert first["rollouts/total"] == 32 and first["rollouts/succeeded_frac"] == 1.0
    assert first["align/sequences_per_trajectory"] == 1.0  # one call per rollout: one sequence
    assert first["calls/off_policy"] == 0  # synchronous loop: every sample from the current weights
    assert first["spans/dropped"] == 0 and first["align/gaps"] == 0  # nothing lost on a healthy run
    assert result.curve_path is not None and result.curve_path.stat().st_size > 0
    logged = [r["step"] for r in _rows(result.metrics_path) if "reward/mean" in r]
    assert logged == list(range(12))
    checkpoints = _rows(result.checkpoints_path)
    assert [c["batch"] for c in checkpoints] == [6, 12]
    assert checkpoints[-1].get("final") is True
    assert [e["step"] for e in result.evals] == [0, 6, 12]


@pytest.mark.slow
def test_reward_rises(one_process_run: Any) -> None:
    rewards = one_process_run.rewards
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last - first > 0.25, rewards


# --------------------------------------------------------------------------------------------- resume


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux ``/proc``)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that will never reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_resume_after_kill_neither_repeats_nor_skips(tmp_path: Path) -> None:
    """Kill the run right after its step-3 checkpoint; the restart trains step 3 only, then finishes."""
    log_path = tmp_path / "hello"
    cmd = [AGL_TINKER, "hello", "--ci", "--steps", "5", "--log-path", str(log_path)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = log_path / "checkpoints.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (checkpoints.exists() and checkpoints.read_text().strip()):
            assert proc.poll() is None, "training exited before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        runners = _children(proc.pid)
        assert len(runners) == 2, runners  # --ci runs 2 runner processes
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # orphaned runner processes notice and stop instead of polling a dead store forever
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in runners):
            assert time.monotonic() < deadline, f"runner processes {runners} outlived the killed run"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [c["batch"] for c in _rows(checkpoints)] == [3]
    killed_steps = Counter(r["step"] for r in _rows(log_path / "metrics.jsonl") if "reward/mean" in r)

    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the runners start once the store answers, and are told to stop before it goes away
    for noise in ("Server is not healthy yet", "Cannot connect"):
        assert noise not in done.stderr, done.stderr[-3000:]
    steps = Counter(r["step"] for r in _rows(log_path / "metrics.jsonl") if "reward/mean" in r)
    resumed = steps - killed_steps
    assert min(resumed) == 3, f"the restart must begin at the checkpoint's batch, trained {sorted(resumed)}"
    assert sorted(resumed) == [3, 4]
    assert all(steps[s] == 1 for s in range(3)), steps  # steps before the checkpoint never repeat
    assert [c["batch"] for c in _rows(checkpoints)] == [3, 5]


# --------------------------------------------------------------------------------------------- split mode


@pytest.fixture
def store_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [AGL_TINKER, "store", "--port", str(port)],  # binds 127.0.0.1 by default
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "agl-tinker store exited"
            assert time.monotonic() < deadline, "agl-tinker store did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_split_mode_store_algorithm_and_two_runner_processes(store_server: str, tmp_path: Path) -> None:
    runners = [
        subprocess.Popen(
            [AGL_TINKER, "hello", "runner", "--store", store_server, "--n-runners", "1"],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        log_path = tmp_path / "split"
        algo = subprocess.run(
            [
                *(AGL_TINKER, "hello", "algo", "--ci", "--steps", "2"),
                "--store",
                store_server,
                "--log-path",
                str(log_path),
            ],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert algo.returncode == 0, algo.stderr[-3000:]
        assert all(r.poll() is None for r in runners), "a runner process died"
        rows = [r for r in _rows(log_path / "metrics.jsonl") if "reward/mean" in r]
        assert [r["step"] for r in rows] == [0, 1]
        assert all(r["rollouts/succeeded_frac"] == 1.0 and r["rollouts/total"] == 32 for r in rows)
        assert "reward curve PNG" in algo.stdout
    finally:
        for r in runners:
            if r.poll() is None:
                os.killpg(r.pid, signal.SIGTERM)
        for r in runners:
            try:
                r.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(r.pid, signal.SIGKILL)


def test_max_steps_beyond_the_epochs_cycles_the_data_with_the_same_batches() -> None:
    from agl_tinker.loop.data import TaskDataset
    from agl_tinker.loop.train import _with_epochs_for

    ds = TaskDataset(tuple({"i": i} for i in range(10)), batch_size=4, group_size=2)
    assert len(ds) == 3
    assert _with_epochs_for(ds, None) is ds and _with_epochs_for(ds, 3) is ds
    longer = _with_epochs_for(ds, 7)
    assert len(longer) >= 7 and longer.n_epochs == 3
    assert [longer.get_batch(i) for i in range(3)] == [ds.get_batch(i) for i in range(3)]
    assert sorted(t["i"] for i in range(3, 6) for t in longer.get_batch(i)) == list(range(10))
