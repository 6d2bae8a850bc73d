"""The headless Chromium the viewer's browser test and ``benchmarks/viewer.py`` open pages in."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
"""Debian's ``chromium`` package; where it is missing, browser checks skip (the test) or report null."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
"""Headless, with nothing in the background reaching out (the machines have no internet)."""
