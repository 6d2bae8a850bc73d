"""Shared test configuration: offline by default; ``--live`` points the live-path suite at real Tinker."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import hypothesis  # noqa: F401  (see below)
import pytest

# Imported up front: otherwise hypothesis' pytest plugin first imports it in the terminal summary,
# where pytest's assertion rewriting parses it once more, and CPython 3.11's AST converter
# intermittently fails there with "AST constructor recursion depth mismatch" (seen on runs of
# only the endpoint tests), failing a run whose tests all passed.

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


LIVE_SKIP_REASON = (
    "--live was given but TINKER_API_KEY is not set: skipping the live target (the real Tinker "
    "service needs a key); without --live the same tests run against the wire simulator"
)


@pytest.fixture(autouse=True)
def _root_logger_level_restored() -> Iterator[None]:
    """Each test leaves the root logger at the level it found. Code under test sets it (the CLI's
    ``-v``, Agent-lightning's logging setup), and a test of "quiet by default" that inherits another
    test's INFO fails or passes by test order (twice a CI failure)."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--live",
        action="store_true",
        default=False,
        help="run the live-path tests (tests/live, marker 'live') against the real Tinker service "
        "(needs TINKER_API_KEY; TINKER_BASE_URL optional) instead of the wire simulator",
    )


def live_target_unavailable(config: pytest.Config) -> str | None:
    """Why the live-path tests cannot run on their target, or None when they can."""
    if config.getoption("--live") and not os.environ.get("TINKER_API_KEY"):
        return LIVE_SKIP_REASON
    return None


def pytest_report_header(config: pytest.Config) -> str:
    if not config.getoption("--live"):
        return "live-path target: wire simulator (fakes.wire, started on a free loopback port)"
    reason = live_target_unavailable(config)
    if reason is not None:
        return f"live-path target: NONE -- {reason}"
    return (
        f"live-path target: real Tinker at {os.environ.get('TINKER_BASE_URL') or 'the default service URL'}"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marker ``live``: the live path, on the wire simulator or (``--live``) the real service;
    ``sim_only`` / ``live_only``: meaningful on one target, skipped on the other."""
    live = bool(config.getoption("--live"))
    unavailable = live_target_unavailable(config)
    for item in items:
        if "live" not in item.keywords:
            continue
        if unavailable is not None:
            item.add_marker(pytest.mark.skip(reason=unavailable))
        elif live and "sim_only" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="simulator-only expectation (runs without --live)"))
        elif not live and "live_only" in item.keywords:
            item.add_marker(
                pytest.mark.skip(reason="real-Tinker-only test: run with --live and TINKER_API_KEY")
            )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reason = live_target_unavailable(config)
    if reason is not None:
        terminalreporter.write_line(f"NOTE: {reason}", yellow=True)
