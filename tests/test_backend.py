"""``agl_tinker.backend``: closing a service the run created never fails the run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agl_tinker.backend import close_service


class _Service:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.closed_with: list[str] = []

    async def close(self, status: str) -> None:
        self.closed_with.append(status)
        if self.behaviour == "raise":
            raise ConnectionError("service down")
        if self.behaviour == "hang":
            await asyncio.sleep(3600)


@pytest.mark.parametrize("failed, status", [(False, "success"), (True, "errored")])
async def test_close_service_reports_how_the_run_ended(failed: bool, status: str) -> None:
    service = _Service("ok")
    await close_service(service, failed=failed)
    assert service.closed_with == [status]


@pytest.mark.parametrize("behaviour", ["raise", "hang"])
async def test_close_service_never_raises_or_hangs(behaviour: str, caplog: Any) -> None:
    service = _Service(behaviour)
    await asyncio.wait_for(close_service(service, timeout_s=0.05), 5.0)
    assert service.closed_with == ["success"]
    assert "could not close the Tinker session" in caplog.text


@pytest.mark.slow
def test_live_models_come_from_the_current_base_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A second service reached in one process (its TINKER_BASE_URL set after the first one's
    server stopped) is the one asked: the SDK shares a REST client per base URL for the process,
    and one built from the environment alone kept asking the first, dead, URL until the deadline."""
    import fakes.tinker as sim
    from agl_tinker.backend import supported_models
    from fakes.wire import start_in_thread

    monkeypatch.setenv("TINKER_API_KEY", "tml-backend-test")
    for name in ("first", "second"):
        with start_in_thread(sim.SimConfig(root_dir=tmp_path / name)) as server:
            monkeypatch.setenv("TINKER_BASE_URL", server.url)
            assert "Qwen/Qwen3-4B-Instruct-2507" in supported_models("live")
