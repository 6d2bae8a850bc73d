"""``agl-tinker smoke`` through the real SDK closes the session it opens: an unclosed SDK session
heartbeats for as long as the process lives (in a test process, past its server's end)."""

from __future__ import annotations

import pytest

from agl_tinker.smoke import run_smoke

from .conftest import Target

pytestmark = [pytest.mark.live, pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.mark.slow
@pytest.mark.sim_only
def test_the_smoke_run_closes_its_session(live_env: Target) -> None:
    assert live_env.server is not None
    sessions = live_env.server.server.service.sessions
    before = set(sessions)
    result = run_smoke(steps=1, backend="live")
    assert len(result.losses) == 1 and result.after
    opened = {sid: state for sid, state in sessions.items() if sid not in before}
    assert list(opened.values()) == ["finished"], opened
