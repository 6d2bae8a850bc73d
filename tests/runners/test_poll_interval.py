"""Idle runners poll the store at a bounded total rate: many runners poll less often each.

An empty dequeue costs the store ~0.8 ms of CPU (``benchmarks/scale.py``'s idle level); 1024
runners at ``fast_runner()``'s 50 ms would ask for 20,480 a second, about 16 cores' worth.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agl_tinker.algorithm import IDLE_POLLS_PER_S, LeanServerStrategy, poll_interval_for
from agl_tinker.examples.hello.agent import hello_agent, hello_dataset
from agl_tinker.examples.hello.train import hello_config

fit_module = importlib.import_module("agl_tinker.algorithm.fit")  # the package's `fit` is the function


@given(st.integers(min_value=1, max_value=100_000))
def test_idle_runners_poll_at_most_the_budget_in_all_and_never_faster_than_50ms(n: int) -> None:
    interval = poll_interval_for(n)
    assert interval >= 0.05
    assert n / interval <= IDLE_POLLS_PER_S + 1e-9
    if n <= IDLE_POLLS_PER_S * 0.05:  # few runners keep the 50 ms pickup
        assert interval == 0.05


def test_no_runners_is_refused() -> None:
    with pytest.raises(ValueError, match="n_runners"):
        poll_interval_for(0)


class _NoRun(LeanServerStrategy):
    """Starts nothing: ``fit`` built its trainer, which is all this test looks at."""

    def execute(self, algorithm: Any, runner: Any, store: Any) -> None:
        return None


def test_fit_gives_the_runners_the_interval_for_the_strategy_s_runner_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[float] = []
    real = fit_module.fast_runner

    def recording(poll_interval: float = 0.05) -> Any:
        asked.append(poll_interval)
        return real(poll_interval)

    monkeypatch.setattr(fit_module, "fast_runner", recording)
    with pytest.raises(RuntimeError, match="did not finish"):
        fit_module.fit(
            hello_agent,
            hello_config(str(tmp_path)),
            hello_dataset("train"),
            strategy=_NoRun(n_runners=1000),
        )
    assert asked == [2.0]
