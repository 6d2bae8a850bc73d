"""How long ``agl-tinker hello`` takes to answer what the log path alone decides (issue 34).

Targets: a rerun of a finished run says so and exits in under 3 s without starting servers; a
log path with metrics but no checkpoint index, or holding another run's identity, is refused at
once (exit 2). Each case runs the CLI as a fresh process (``python -m agl_tinker.cli``, the code
of the tree this script sits in), ``--repeats`` times; the result is the median wall time and the
exit status of each case, and the load average it ran at (this machine is shared):

    .venv/bin/python benchmarks/refusals.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stdout import emit_json, json_stdout

ROOT = Path(__file__).resolve().parents[1]
FINISHED_INDEX = '{"name": "final", "batch": 20, "state_path": "tinker://r/weights/final"}\n'
RUN_JSON = '{"identity": {"lora_rank": 8}, "backend": "simulator (in process)", "outputs": "."}\n'


def _cases(root: Path) -> dict[str, list[str]]:
    """Each case's log path, made ready, and its extra settings."""
    finished, no_index, other = root / "finished", root / "no_index", root / "other"
    for path in (finished, no_index, other):
        path.mkdir()
    (finished / "checkpoints.jsonl").write_text(FINISHED_INDEX)
    (no_index / "metrics.jsonl").write_text('{"step": 0}\n')
    (other / "run.json").write_text(RUN_JSON)
    return {
        "finished_rerun": ["--log-path", str(finished)],
        "missing_index": ["--log-path", str(no_index)],
        "other_identity": ["--log-path", str(other), "lora_rank=4"],
    }


def _run(argv: list[str]) -> tuple[float, int]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "agl_tinker.cli", "hello", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
    )
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in _cases(Path(tmp)).items():
            runs = [_run(argv) for _ in range(args.repeats)]
            result[f"{name}_s"] = round(statistics.median(s for s, _ in runs), 2)
            result[f"{name}_exit"] = sorted({code for _, code in runs})
    result["load_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    emit_json(result)


if __name__ == "__main__":
    with json_stdout():
        main()
