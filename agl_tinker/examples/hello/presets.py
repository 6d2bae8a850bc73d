"""Hello 1024's training settings: the ``TrainConfig`` values ``agl-tinker hello`` starts from.

Kept free of heavy imports so that the command line can check a configuration before it imports
Agent-lightning or starts anything. ``key=value`` arguments override any of them.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

DEFAULTS: dict[str, Any] = {
    "max_steps": 20,
    "batch_size": 8,
    "group_size": 4,
    "learning_rate": 3e-2,
    "lora_rank": 8,
    "eval_every": 5,
    "save_every": 5,
    "max_tokens": 32,
    "min_valid_per_group": 2,
    "rollout_timeout_s": 60.0,
}
CI: dict[str, Any] = {**DEFAULTS, "max_steps": 6, "eval_every": 3, "save_every": 3}
"""A short configuration that finishes in well under a minute offline."""


def default_log_path() -> str:
    return os.path.join(tempfile.gettempdir(), "agl-tinker", f"hello-{time.strftime('%Y%m%d-%H%M%S')}")
