"""The viewer's costs (issue 35), one JSON line on stdout.

1. A synthetic run of 200 steps x 64 rollouts (16 tasks x 4), written by the real transcript
   writer at the default sample size from rollouts the real core rebuilt from spans: bytes per
   step, and the writer's time per step.
2. ``agl-tinker view`` on it, as a process: time from its start until it has served what the page
   asks for on opening (page, scripts, run, all metrics, the last step's rollouts, one transcript),
   and its memory then (RSS). With Chromium (``/usr/bin/chromium`` and Playwright): the time until
   the page shows its curves and the last step's rollouts.
3. A real offline training run (Hello, 3 steps of 64 rollouts, in-process runners): the
   transcripts' share of each step's wall time, and their bytes per step.

    python benchmarks/viewer.py            # about a minute
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # spanfactory: spans as the endpoint writes them
sys.path.insert(0, str(ROOT / "tests" / "viewer"))  # recorded_run, chromium

STEPS, GROUPS, GROUP_SIZE = 200, 16, 4


def synthetic_run(log: Path) -> dict[str, float]:
    import json

    from recorded_run import metrics_row, step_groups

    from agl_tinker.viewer.writer import TranscriptWriter

    variants = [step_groups(v, GROUPS, GROUP_SIZE) for v in range(4)]  # rebuilt by the core from spans
    writer = TranscriptWriter(log, sample=8, decode=lambda ids: f"w{ids[0] % 997} ")
    seconds = 0.0
    sizes = []
    with (log / "metrics.jsonl").open("w") as metrics:
        for step in range(STEPS):
            t0 = time.perf_counter()
            written = writer.write(step, variants[step % len(variants)])
            seconds += time.perf_counter() - t0
            sizes.append(written["transcripts/bytes"])
            metrics.write(json.dumps(metrics_row(step)) + "\n")
    return {
        "synthetic_bytes_per_step": sum(sizes) / len(sizes),
        "synthetic_write_ms_per_step": 1000 * seconds / STEPS,
    }


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def open_viewer(log: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agl_tinker.cli", "view", str(log)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split(" at ", 1)[1].split()[0]
        last = STEPS - 1
        for path in (
            "",
            "static/app.js",
            "static/uPlot.iife.min.js",
            "api/run",
            "api/metrics?since=0",
            f"api/step/{last}",
            f"api/rollout/{last}/0",
        ):
            with urllib.request.urlopen(url + path) as response:
                response.read()
        opened = time.perf_counter() - t0
        rss, peak = _rss_mb(proc.pid)
        out = {"view_open_s": opened, "view_rss_mb": rss, "view_peak_rss_mb": peak}
        browser = _browser_open_s(url)
        if browser is not None:
            out["view_browser_open_s"] = browser
            out["view_rss_mb_after_browser"] = _rss_mb(proc.pid)[0]
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _browser_open_s(url: str) -> float | None:
    from chromium import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("#chart-reward canvas", timeout=30_000)
        page.wait_for_selector("tr.row", timeout=30_000)
        seconds = time.perf_counter() - t0
        browser.close()
    return seconds


def training_overhead(log: Path) -> dict[str, float]:
    from agl_tinker.heavy_import import import_agentlightning

    import_agentlightning()
    from agentlightning.store.memory import InMemoryLightningStore

    from agl_tinker import backend
    from agl_tinker.examples.hello.agent import hello_dataset, hello_rollout
    from agl_tinker.loop.config import TrainConfig
    from agl_tinker.loop.train import train
    from agl_tinker.runners.inprocess import InProcessRunners

    config = TrainConfig(
        log_path=str(log),
        max_steps=3,
        batch_size=GROUPS,
        group_size=GROUP_SIZE,
        learning_rate=3e-2,
        lora_rank=8,
        max_tokens=32,
        rollout_timeout_s=60.0,
    )

    async def run() -> Any:
        store = InMemoryLightningStore()
        service = backend.service_client(root_dir=log / "sim")
        async with InProcessRunners(store, hello_rollout, concurrency=GROUPS * GROUP_SIZE):  # type: ignore[arg-type]
            return await train(config, store, hello_dataset("train"), service=service, show_progress=False)

    result = asyncio.run(run())
    shares, sizes = [], []
    for step in result.steps:
        wall = step["time/sampling_s"] + step["time/training_s"] + step["time/swap_s"]
        shares.append(step["time/transcripts_s"] / wall)
        sizes.append(step["transcripts/bytes"])
    return {
        "train_transcripts_pct_of_step": 100 * sum(shares) / len(shares),
        "train_transcripts_ms_per_step": 1000
        * sum(s["time/transcripts_s"] for s in result.steps)
        / len(result.steps),
        "train_transcripts_bytes_per_step": sum(sizes) / len(sizes),
        "train_step_wall_s": sum(
            s["time/sampling_s"] + s["time/training_s"] + s["time/swap_s"] for s in result.steps
        )
        / len(result.steps),
    }


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "synthetic"
        log.mkdir()
        out: dict[str, Any] = {"steps": STEPS, "rollouts_per_step": GROUPS * GROUP_SIZE, "sample": 8}
        out.update(synthetic_run(log))
        out.update(open_viewer(log))
        out.update(training_overhead(Path(tmp) / "hello"))
    emit_json({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()})


if __name__ == "__main__":
    with json_stdout():
        main()
