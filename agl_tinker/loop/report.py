"""End-of-run artefacts: the reward curve PNG and a one-screen summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_metrics(metrics_path: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl``; a resumed run's repeated steps keep their last value."""
    if not metrics_path.exists():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    with metrics_path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            step = row.get("step")
            if isinstance(step, int):
                by_step.setdefault(step, {}).update(row)
    return [by_step[k] for k in sorted(by_step)]


def write_reward_curve(metrics_path: Path, out_path: Path, prefix: str = "") -> Path | None:
    """Plot train (and eval) mean reward per step; ``None`` when there is nothing to plot.

    ``prefix`` picks one policy's curve of several (``policy/<name>/``: its ``reward/mean``).
    """
    rows = read_metrics(metrics_path)
    key, eval_key = f"{prefix}reward/mean", f"eval/{prefix}reward/mean"
    train = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    evals = [(r["step"], r[eval_key]) for r in rows if r.get(eval_key) is not None]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", markersize=3, label="train (mean per step)")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="s", linestyle="--", label="validation")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def summary_lines(
    title: str,
    rewards: Sequence[float],
    evals: Sequence[dict[str, Any]],
    paths: dict[str, Path | str | None],
    seconds: float,
    first_step: int = 0,
) -> list[str]:
    """A one-screen account of a run; ``first_step``: the step it started at (a resumed run's is
    its checkpoint's), so the lines name the steps this run trained."""
    lines = [title, "=" * len(title)]
    if rewards:
        k = max(1, min(3, len(rewards) // 3))
        first = sum(rewards[:k]) / k
        last = sum(rewards[-k:]) / k
        span = f"step {first_step} -> step {first_step + len(rewards) - 1}"
        resumed = f", resumed at step {first_step}" if first_step else ""
        lines.append(f"steps trained:      {len(rewards)} ({span}{resumed})")
        lines.append(f"mean reward:        {first:+.3f} (first {k}) -> {last:+.3f} (last {k})")
    scored = [e for e in evals if e.get("eval/reward/mean") is not None]
    if scored:
        lines.append(
            f"validation reward:  {scored[0]['eval/reward/mean']:+.3f} (step {scored[0]['step']}) -> "
            f"{scored[-1]['eval/reward/mean']:+.3f} (step {scored[-1]['step']})"
        )
    lines.append(f"wall time:          {seconds:.1f}s")
    for name, path in paths.items():
        if path is not None:
            lines.append(f"{name + ':':<20}{path}")
    return lines
