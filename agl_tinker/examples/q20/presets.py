"""20 Questions' training settings: the ``TrainConfig`` values ``agl-tinker q20 train`` starts from.

Kept free of heavy imports so that the command line can check a configuration before it imports
Agent-lightning or starts anything. ``key=value`` arguments override any of them.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

MODEL = "Qwen/Qwen3-4B-Instruct-2507"

SPLITS = ("train", "live", "val")
"""The dataset's ``split`` values. ``train``: secrets the offline simulator can name, so can win;
``live``: more training secrets, words the simulator never says, trained on only against the real
service (offline they would be lost games that teach nothing); ``val``: held out, all nameable."""

DEFAULTS: dict[str, Any] = {
    "model_name": MODEL,
    "max_steps": 20,
    "batch_size": 8,
    "group_size": 4,
    # Small on purpose: the simulated policy learns both what transfers to held-out secrets (guess
    # more, waste fewer turns) and which nouns won the training games; at 3e-2 the second takes
    # over within 20 steps and the validation win rate falls back (README, 20 Questions).
    "learning_rate": 5e-3,
    "lora_rank": 8,
    "eval_every": 10,
    "save_every": 5,
    "max_tokens": 96,
    "max_context_tokens": 8192,
    "rollout_timeout_s": 300.0,
    # Validation samples like `q20 evaluate` (0.7), so its win rate is the one evaluate reports;
    # greedy (0.0) validation stays at 0 until a winning line becomes the single most likely one.
    "eval_temperature": 0.7,
}
VAL_GAMES_PER_SECRET = 6
"""Validation plays each held-out secret this many times (sampled at ``eval_temperature``), so a
win rate rests on 96 games rather than 16: one game per secret moves the rate 6 points."""

CI_SECRETS = ("apple", "fish", "guitar", "pen")
"""The ``--ci`` run's training secrets: one per category (food, animal, instrument, object), each one
the untrained simulator wins in about a third of its games at the training temperature (measured
3, 2, 2 and 3 of 8), so the policy has room to get better at them. Every ``--ci`` step plays these
same four, so its train reward compares like with like; over a handful of steps drawn from all
training secrets, the reward mostly says which secrets were drawn, not what the policy learnt."""

CI: dict[str, Any] = {**DEFAULTS, "max_steps": 6, "batch_size": len(CI_SECRETS), "learning_rate": 3e-2}
"""A short configuration (about two minutes offline): six steps over :data:`CI_SECRETS`, at the
former default learning rate, the one the README's ``--ci`` figures are measured at (``--ci`` has
not been measured at the default run's smaller one)."""


def default_log_path() -> str:
    return os.path.join(tempfile.gettempdir(), "agl-tinker", f"q20-{time.strftime('%Y%m%d-%H%M%S')}")


def default_games_path(command: str) -> str:
    """Where ``q20 dryrun``/``evaluate`` write their games by default: a new directory per run next
    to the training runs' (never the current directory)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(tempfile.gettempdir(), "agl-tinker", f"q20-{command}-{stamp}", "games.jsonl")
