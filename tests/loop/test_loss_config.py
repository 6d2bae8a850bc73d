"""``loss_fn`` / ``loss_fn_config`` validation: Tinker's documented losses and their config keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agl_tinker.loop.config import ConfigError, TrainConfig


@pytest.mark.parametrize(
    ("loss_fn", "loss_fn_config"),
    [
        ("importance_sampling", None),
        ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
        ("cispo", {"clip_high_threshold": 1.3}),
        ("dro", {"beta": 0.05}),
        ("gspo", None),
        ("stable_reinforce", {"kl_coeff": 0.01}),
    ],
)
def test_documented_losses_and_their_config_are_accepted(
    tmp_path: Path, loss_fn: str, loss_fn_config: Any
) -> None:
    TrainConfig(log_path=str(tmp_path), loss_fn=loss_fn, loss_fn_config=loss_fn_config)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("loss_fn", "loss_fn_config", "says"),
    [
        ("importance_sampling", {"beta": 0.1}, "not 'importance_sampling'"),
        ("dro", {"clip_low_threshold": 0.5}, "takes \\['beta'\\]"),
        ("ppo", {"kl_coeff": 0.1}, "clip_high_threshold"),
        ("stable_reinforce", {"beta": 0.1}, "kl_coeff"),
    ],
)
def test_a_loss_config_the_loss_does_not_take_is_refused(
    tmp_path: Path, loss_fn: str, loss_fn_config: Any, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        TrainConfig(log_path=str(tmp_path), loss_fn=loss_fn, loss_fn_config=loss_fn_config)  # type: ignore[arg-type]
