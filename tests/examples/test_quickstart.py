"""The README's Python example is ``agl_tinker/examples/quickstart.py`` verbatim, and it runs and learns offline."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agl_tinker.loop.data import load_tasks

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "agl_tinker" / "examples" / "quickstart.py"


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_readme_shows_the_quickstart_verbatim() -> None:
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert QUICKSTART.read_text() in blocks


def test_quickstart_dataset_has_both_splits() -> None:
    tasks = load_tasks(
        ROOT / "agl_tinker" / "examples" / "data" / "quickstart.csv", required_fields=("phrase", "split")
    )
    splits = {t["split"] for t in tasks}
    assert splits == {"train", "val"}


def test_score_rewards_exact_repetition_most() -> None:
    from agl_tinker.examples.quickstart import score

    assert score("the red kite sleeps", "the red kite sleeps") == 1.0
    assert score('"The red kite sleeps."', "the red kite sleeps") == 1.0
    assert score("Okay: the red kite sleeps", "the red kite sleeps") == 0.5
    assert score("Hello! How can I help you today?", "the red kite sleeps") == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_quickstart_runs_beyond_one_epoch_and_learns(tmp_path: Path) -> None:
    log_path = tmp_path / "qs"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "AGL_TINKER_SIM_DIR": str(tmp_path / "sim"),
        "AGL_SERVER_PORT": str(_free_port()),  # Agent-lightning's default strategy binds this port
    }
    run = subprocess.run(
        [sys.executable, str(QUICKSTART), "--steps", "9", "--log-path", str(log_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # 56 training tasks in batches of 8 are 7 steps an epoch: 9 steps cycle into a second epoch.
    assert "step 8 (9/9)" in run.stderr
    match = re.search(r"train reward:\s+([-+.\d]+) \(step 0\) -> ([-+.\d]+)", run.stdout)
    assert match, run.stdout
    first, last = float(match[1]), float(match[2])
    assert last > first + 0.2, run.stdout
    assert (log_path / "metrics.jsonl").exists() and "metrics:" in run.stdout
