"""Every ``/api/v1`` path the installed SDK and its ``tinker`` CLI call is routed by the wire
simulator, except the ones ``fakes/README.md`` lists as not served (with the reason there).

The router is asked with an unused method (405: routed, 404: not), so this guards paths, not
methods: ``sessions/search`` (a POST) matches the ``GET sessions/{id}`` route and is listed. The
list is kept honest the other way too: a path listed as not served must not be routed, unless it is
one that a parameterised route shadows (``SHADOWED``)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import tinker

from fakes.wire import start_in_thread

NOT_SERVED = {  # path -> how fakes/README.md's "Not served (404), and why" names it
    "/api/v1/auth/token": "`auth/token`",
    "/api/v1/auth/apikey/me": "`auth/apikey/me`",
    "/api/v1/sessions/search": "`sessions/search`",
    "/api/v1/sessions/x/project": "`sessions/{id}/project`",
    "/api/v1/billing/usage/checkpoints/current": "`billing/*`",
    "/api/v1/billing/usage/events": "`billing/*`",
    "/api/v1/audit": "`audit`",
}
SHADOWED = {"/api/v1/sessions/search"}  # GET sessions/{session_id} matches it; its POST is not served
README = Path(__file__).resolve().parents[2] / "fakes" / "README.md"


def _sdk_paths() -> set[str]:
    """The literal and f-string API paths in the SDK's non-test sources, parameters filled in."""
    paths = set()
    for source in Path(tinker.__file__).parent.rglob("*.py"):
        if source.name.endswith("_test.py"):
            continue
        for raw in re.findall(r'f?"(/api/v1/[^"]*)"', source.read_text()):
            raw = raw.replace("{checkpoint_id}", "weights/x")
            paths.add(re.sub(r"\{[^}]+\}", "x", raw))
    return paths


def test_no_sdk_route_is_unrouted_unless_listed_as_not_served(tmp_path: Path) -> None:
    paths = _sdk_paths()
    assert "/api/v1/retrieve_futures" in paths and len(paths) > 30  # the scan sees the SDK's calls
    with start_in_thread() as server:
        # An unused method: the router answers 405 for a routed path, 404 for an unknown one,
        # before any handler runs.
        unrouted = {
            p
            for p in paths
            if httpx.request("PATCH", server.url + p, headers={"X-API-Key": "tml-t"}).status_code == 404
        }
    assert unrouted <= set(NOT_SERVED), f"unrouted and not listed as not served: {unrouted - set(NOT_SERVED)}"
    stale = set(NOT_SERVED) - SHADOWED - unrouted
    assert not stale, f"served now, but still listed as not served: {stale}"
    listed = README.read_text().split("Not served (404), and why")[1].split("###")[0]
    for path, name in NOT_SERVED.items():
        assert name in listed, f"{path} is not served but fakes/README.md does not say why"
