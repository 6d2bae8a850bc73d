"""Hello 1024 trained through the real SDK: the one-click path with ``AGL_TINKER_BACKEND=live``.

On the wire simulator the reward rises within the CI configuration, also with wire faults
injected (the SDK retries them; the training loop sees no error); on real Tinker two steps run.
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import pytest

import fakes.tinker as sim
from agl_tinker.examples.hello.train import hello_config, run_one_click
from fakes.wire import WireFaults, start_in_thread

from .conftest import SIM_KEY, Target

# The cookbook calls the SDK's deprecated *_async methods; their FutureWarnings are not ours.
pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]

FAULTS = WireFaults(
    drop_rate=0.01,
    error_5xx_rate=0.02,
    timeout_408_rate=0.03,
    rate_limit_429_rate=0.01,
    try_again_rate=0.05,
    slow_future_rate=0.05,
    slow_future_s=0.2,
    seed=3,
)


def _train(tmp_path: Path, steps: int) -> list[float]:
    result = run_one_click(hello_config(str(tmp_path / "hello"), ci=True, max_steps=steps))
    assert result.end_step == steps
    assert len(result.rewards) == steps
    assert result.final_sampler_path is not None and result.final_sampler_path.startswith("tinker://")
    return result.rewards


def test_hello_trains_through_the_sdk(live_env: Target, tmp_path: Path) -> None:
    rewards = _train(tmp_path, 6 if live_env.is_sim else 2)
    if live_env.is_sim:
        assert mean(rewards[-2:]) > mean(rewards[:2]) + 0.2, rewards


@pytest.mark.sim_only
def test_hello_trains_through_wire_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_in_thread(sim.SimConfig(root_dir=tmp_path / "ckpt"), FAULTS) as server:
        monkeypatch.setenv("AGL_TINKER_BACKEND", "live")
        monkeypatch.setenv("TINKER_BASE_URL", server.url)
        monkeypatch.setenv("TINKER_API_KEY", SIM_KEY)
        rewards = _train(tmp_path, 6)
        injected = server.server.faults.counts
        sessions = set(server.server.service.sessions.values())
    assert sessions == {"finished"}  # the run closed the service client it created
    assert sum(injected.values()) >= 5, injected
    assert mean(rewards[-2:]) > mean(rewards[:2]) + 0.2, rewards
