"""`agl-tinker view` on a recorded run: in headless Chromium (Playwright), and the same checks on the
served HTML/JSON, which run everywhere (the browser test skips, saying why, where no browser is).

Screenshots of each page go to ``test-artifacts/viewer/`` (git-ignored).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from chromium import CHROMIUM, CHROMIUM_ARGS
from recorded_run import decode, step_groups, write_run, write_step

from agl_tinker.viewer.server import start
from agl_tinker.viewer.writer import TranscriptWriter

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viewer"


@pytest_asyncio.fixture
async def viewer(tmp_path: Path) -> AsyncIterator[tuple[Path, str]]:
    log = tmp_path / "run"
    write_run(log, steps=4, n_groups=3, group_size=4)
    TranscriptWriter(log, sample=2, decode=decode).write(2, step_groups(2, 1, 3), kind="eval")
    runner, url = await start(log)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield log, url
    finally:
        await runner.cleanup()


def _browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; it is in the dev extra)"
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium); test_served_page_and_api checks the same over HTTP"
    return None


async def test_served_page_and_api_hold_what_the_page_shows(viewer: tuple[Path, str]) -> None:
    log, url = viewer
    async with aiohttp.ClientSession() as http:
        page = await (await http.get(url)).text()
        for needle in (
            'id="chart-reward"',
            'id="chart-excluded"',
            'id="metric-select"',
            "/static/uPlot.iife.min.js",
        ):
            assert needle in page
        for name in ("uPlot.iife.min.js", "uPlot.min.css", "app.js", "app.css"):
            assert (await http.get(url + "static/" + name)).status == 200
        assert (await http.get(url + "static/..%2Fserver.py")).status == 404
        run = await (await http.get(url + "api/run")).json()
        assert run["steps"] == {"": [0, 1, 2, 3]} and run["evals"] == {"": [2]}
        evals = await (await http.get(url + "api/step/2?kind=eval")).json()
        assert len(evals) == 3 and (await http.get(url + "api/step/2?kind=nope")).status == 400
        for summary in evals:  # the page opens an evaluation's rollout with its kind (it got step 2's)
            row = await (await http.get(url + f"api/rollout/2/{summary['index']}?kind=eval")).json()
            assert {k: row[k] for k in summary if k in row} == {k: v for k, v in summary.items() if k in row}
        assert (await http.get(url + "api/rollout/2/3?kind=eval")).status == 404  # 3 evaluated, 12 trained
        metrics = await (await http.get(url + "api/metrics?since=0")).json()
        assert metrics["total"] == 4 and "reward/mean" in metrics["rows"][0]
        rows = await (await http.get(url + "api/step/3")).json()
        assert len(rows) == 12 and all("calls" not in r for r in rows)  # lists carry summaries only
        detailed = next(r for r in rows if r["detailed"] and r["drift"])
        row = await (await http.get(url + f"api/rollout/3/{detailed['index']}")).json()
        trained = [c for c in row["calls"] if c["trained"]]
        assert trained and all(c["response"] and c["logprobs"] for c in trained)  # action tokens, coloured
        assert all(c["prompt"] for c in row["calls"])  # observation tokens, dimmed
        assert row["drift_reports"] and row["token_text"]
        assert (await http.get(url + "api/rollout/3/999")).status == 404
        assert (await http.get(url + "api/step/x")).status == 400
        for policy in ("..", "_x", "é"):  # names no transcript file can carry: were 500s
            assert (await http.get(url + "api/step/3", params={"policy": policy})).status == 400
        write_step(log, 4, n_groups=3)  # a live run writes a step: the next poll sees it
        assert (await (await http.get(url + "api/run")).json())["steps"][""][-1] == 4
        more = await (await http.get(url + "api/metrics?since=4")).json()
        assert [r["step"] for r in more["rows"]] == [4]


@pytest.mark.slow
async def test_in_chromium_curves_rollouts_tokens_and_a_live_step(viewer: tuple[Path, str]) -> None:
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    log, url = viewer
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(url)
            for chart in ("#chart-reward", "#chart-excluded", "#chart-metric"):
                await page.wait_for_selector(f"{chart} canvas", timeout=15_000)
            assert await page.locator("#chart-reward .u-legend").inner_text() != ""
            assert await page.locator("#step-list li").count() == 5  # 4 steps, 1 evaluation
            await page.click('#step-list li[data-kind="eval"]')
            await page.wait_for_selector("#step-title:has-text('Validation before step 2')")
            assert await page.locator("tr.row").count() == 3
            await page.click('#step-list li[data-step="3"][data-kind="step"]')
            await page.wait_for_selector("#step-title:has-text('Step 3')")
            await page.wait_for_selector("tr.row")
            await page.screenshot(path=str(ARTIFACTS / "run.png"), full_page=True)

            await page.click("#filters button[data-filter=drifted]")
            await page.click("tr.row:not(.summary-only)")
            await page.wait_for_selector("#chat .msg")
            assert await page.locator("#chat .call-head").count() >= 2
            await page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)

            await page.click("#rollout-tabs button[data-view=tokens]")
            assert await page.locator("#tokens > .tok.obs").count() > 0  # masked observation tokens
            assert await page.locator("#tokens > .tok.act").count() > 0  # trained action tokens
            assert await page.locator("#tokens > .drift-mark").count() == 1
            assert await page.locator("#tokens > .seq-break").count() == 2  # drift starts a new sequence
            await page.screenshot(path=str(ARTIFACTS / "tokens.png"), full_page=True)

            await page.evaluate("window.__notReloaded = true")
            write_step(log, 4, n_groups=3)
            await page.wait_for_selector('#step-list li[data-step="4"][data-kind="step"]', timeout=10_000)
            assert await page.evaluate("window.__notReloaded") is True
            await page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)
        finally:
            await browser.close()
    assert not errors, errors


def test_view_refuses_a_path_that_is_not_a_run(tmp_path: Path, capsys: Any) -> None:
    from agl_tinker.cli import main

    assert main(["view", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


async def test_several_policies_get_one_step_list_each(viewer: tuple[Path, str]) -> None:
    log, url = viewer
    TranscriptWriter(log, sample=2, decode=decode).write(0, step_groups(0, 1, 2), policy="alice")
    async with aiohttp.ClientSession() as http:
        run = await (await http.get(url + "api/run")).json()
        assert run["steps"] == {"": [0, 1, 2, 3], "alice": [0]}
        rows = await (await http.get(url + "api/step/0?policy=alice")).json()
        assert len(rows) == 2 and {r["policy"] for r in rows} == {"alice"}
        assert (await http.get(url + "api/step/0?policy=../x")).status == 400
