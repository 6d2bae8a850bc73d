"""Train the Duet's two policies on the simulator: ``python -m agl_tinker.examples.duet.train``.

``key=value`` arguments override :data:`DEFAULTS` (chz syntax, e.g. ``max_steps=30``
``policies.checker.learning_rate=0.05``). Each policy writes its checkpoints and reward curve
under ``<log_path>/policies/<name>/``; ``metrics.jsonl`` has ``policy/<name>/...`` columns.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import chz

from agl_tinker.algorithm import fit
from agl_tinker.examples.duet.agent import CHECKER, SPEAKER, duet_agent, duet_dataset
from agl_tinker.loop.config import PolicyConfig, TrainConfig, bind_cookbook_types
from agl_tinker.loop.train import TrainResult

DEFAULTS: dict[str, Any] = {
    "max_steps": 20,
    "batch_size": 8,
    "group_size": 4,
    "learning_rate": 3e-2,
    "lora_rank": 8,
    "max_tokens": 32,
    "rollout_timeout_s": 60.0,
    "policies": {
        SPEAKER: PolicyConfig(reward_key=SPEAKER),
        CHECKER: PolicyConfig(reward_key=CHECKER, learning_rate=5e-2),
    },
}


def duet_config(log_path: str, **overrides: Any) -> TrainConfig:
    """The Duet's ``TrainConfig``: :data:`DEFAULTS`, then ``overrides``."""
    return TrainConfig(log_path=log_path, **{**DEFAULTS, **overrides})


def run(config: TrainConfig, n_runners: int = 2) -> TrainResult:
    """One-click training of both policies (store, algorithm and runners in this command)."""
    return fit(duet_agent, config, duet_dataset("train"), n_runners=n_runners, required_fields=("identity",))


def curves(result: TrainResult) -> dict[str, tuple[float, float]]:
    """Each policy's mean reward over the first and the last steps (a third of the run, 1-3 steps)."""
    out: dict[str, tuple[float, float]] = {}
    for name in (SPEAKER, CHECKER):
        values = [
            s[f"policy/{name}/reward/mean"]
            for s in result.steps
            if s.get(f"policy/{name}/reward/mean") is not None
        ]
        if values:
            k = max(1, min(3, len(values) // 3))
            out[name] = (sum(values[:k]) / k, sum(values[-k:]) / k)
    return out


def config_from_argv(argv: list[str], log_path: str | None = None) -> TrainConfig:
    """:data:`DEFAULTS` with chz ``key=value`` overrides (``policies.checker.lora_rank=4``)."""
    bind_cookbook_types()
    if log_path is None:
        log_path = os.path.join(tempfile.gettempdir(), "agl-tinker", f"duet-{time.strftime('%Y%m%d-%H%M%S')}")
    flat = {k: v for k, v in DEFAULTS.items() if k != "policies"}
    for name, policy in DEFAULTS["policies"].items():  # as sub-parameters, so argv may set one field
        for field_name in chz.chz_fields(policy):
            flat[f"policies.{name}.{field_name}"] = getattr(policy, field_name)
    return chz.Blueprint(TrainConfig).apply({"log_path": log_path, **flat}).make_from_argv(argv)


def main(argv: list[str] | None = None) -> None:
    """``python -m agl_tinker.examples.duet.train [key=value ...]``: train, then print both curves."""
    result = run(config_from_argv(sys.argv[1:] if argv is None else argv))
    for name, (first, last) in curves(result).items():
        print(f"{name}: mean reward {first:+.3f} (first steps) -> {last:+.3f} (last steps)")
    for name, path in result.policy_curves.items():
        print(f"{name} reward curve: {path}")


if __name__ == "__main__":
    main()
