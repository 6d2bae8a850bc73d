"""The live-path suite: the unmodified tinker SDK end to end, on one of two targets.

Every test module here carries ``pytestmark = pytest.mark.live``. Without ``--live`` the target is the wire simulator
(``fakes.wire``), started once per session on a free loopback port, with checkpoints in a
temporary directory; with ``--live`` it is the real Tinker service (``TINKER_API_KEY``, optional
``TINKER_BASE_URL``, model ``$AGL_TINKER_LIVE_MODEL``). Tests read the target's model and step
counts from the ``target`` fixture; ``sim_only`` / ``live_only`` mark the few that make sense
on one target only (the root ``conftest.py`` applies the skips).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import tinker

from fakes.tinker import SimConfig
from fakes.wire import RunningWireServer, start_in_thread

SIM_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
LIVE_MODEL = os.environ.get("AGL_TINKER_LIVE_MODEL", "Qwen/Qwen3-4B-Instruct-2507")
SIM_KEY = "tml-local"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the live-path tests send the SDK, and what to expect there."""

    name: Literal["wire-sim", "tinker"]
    base_url: str | None
    api_key: str
    model: str
    rank: int
    checkpoint_root: Path | None  # the simulator's checkpoint directory
    server: RunningWireServer | None

    @property
    def is_sim(self) -> bool:
        return self.server is not None

    def env(self) -> dict[str, str]:
        """Environment that sends ``agl_tinker.backend`` (and a subprocess) to this target."""
        env = {"AGL_TINKER_BACKEND": "live", "TINKER_API_KEY": self.api_key}
        if self.base_url:
            env["TINKER_BASE_URL"] = self.base_url
        if self.checkpoint_root is not None:
            env["AGL_TINKER_SIM_DIR"] = str(self.checkpoint_root)
        return env

    def service_client(self) -> tinker.ServiceClient:
        return tinker.ServiceClient(base_url=self.base_url, api_key=self.api_key)


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Target]:
    if pytestconfig.getoption("--live"):
        key = os.environ["TINKER_API_KEY"]  # present: the root conftest skips these tests otherwise
        yield Target("tinker", os.environ.get("TINKER_BASE_URL"), key, LIVE_MODEL, 8, None, None)
        return
    root = tmp_path_factory.mktemp("wire-sim")
    with start_in_thread(SimConfig(root_dir=root)) as server:
        yield Target("wire-sim", server.url, SIM_KEY, SIM_MODEL, 8, root, server)


@pytest.fixture(scope="session")
def service(target: Target) -> Iterator[tinker.ServiceClient]:
    client = target.service_client()
    yield client
    client.close("success").result()


@pytest.fixture
def live_env(target: Target, monkeypatch: pytest.MonkeyPatch) -> Target:
    """``agl_tinker.backend.service_client()`` reaches the target through the real SDK."""
    for name, value in target.env().items():
        monkeypatch.setenv(name, value)
    return target
