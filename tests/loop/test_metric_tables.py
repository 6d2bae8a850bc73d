"""The run's metrics loggers: rows always reach metrics.jsonl and config.json is written; the cookbook's
console table is rendered only when its logger shows INFO (it used to be rendered every step and then
dropped, on the trainer's critical path)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from async_run import hello_config, run_hello
from tinker_cookbook.utils import ml_log

from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.metric_tables import setup_metrics_logging

TABLE_LOGGER = "tinker_cookbook.utils.ml_log"


@pytest.fixture
def tables(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every rich table the cookbook's PrettyPrintLogger builds."""
    built: list[Any] = []
    real = ml_log.Table

    def counting(*args: Any, **kwargs: Any) -> Any:
        table = real(*args, **kwargs)
        built.append(table)
        return table

    monkeypatch.setattr(ml_log, "Table", counting)
    return built


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_quiet_by_default_no_table_is_rendered_and_rows_are_still_written(
    tmp_path: Path, tables: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=TABLE_LOGGER)
    logger = setup_metrics_logging(str(tmp_path), None, None, TrainConfig(log_path=str(tmp_path)))
    logger.log_metrics({"reward/mean": 0.5, "time/step_s": 1.0}, step=0)
    logger.close()
    assert tables == []
    assert _rows(tmp_path) == [{"reward/mean": 0.5, "time/step_s": 1.0, "step": 0}]
    assert json.loads((tmp_path / "config.json").read_text())["log_path"] == str(tmp_path)
    assert not [r for r in caplog.records if r.name == TABLE_LOGGER and r.levelno == logging.INFO]


def test_the_table_is_rendered_and_logged_when_its_logger_shows_info(
    tmp_path: Path, tables: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Quiet first, set here: an earlier test may have left the logger (or the root) at INFO.
    caplog.set_level(logging.WARNING, logger=TABLE_LOGGER)
    logger = setup_metrics_logging(str(tmp_path), None, None, None)
    logger.log_metrics({"reward/mean": 0.5}, step=0)  # quiet: nothing
    caplog.set_level(logging.INFO, logger=TABLE_LOGGER)  # turned on during the run
    logger.log_metrics({"reward/mean": 0.75}, step=1)
    logger.close()
    assert len(tables) == 1
    shown = [r.getMessage() for r in caplog.records if r.name == TABLE_LOGGER]
    assert any("Step 1" in text and "reward/mean" in text and "0.75" in text for text in shown)
    assert [row["step"] for row in _rows(tmp_path)] == [0, 1]


def test_the_config_table_follows_the_same_rule(
    tmp_path: Path, tables: list[Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed: list[str] = []
    monkeypatch.setattr(
        ml_log.PrettyPrintLogger, "log_hparams", lambda self, config: printed.append("hparams")
    )
    caplog.set_level(logging.WARNING, logger=TABLE_LOGGER)
    setup_metrics_logging(str(tmp_path / "quiet"), None, None, TrainConfig(log_path=str(tmp_path))).close()
    assert printed == []
    caplog.set_level(logging.INFO, logger=TABLE_LOGGER)
    setup_metrics_logging(str(tmp_path / "shown"), None, None, TrainConfig(log_path=str(tmp_path))).close()
    assert printed == ["hparams"]
    assert (tmp_path / "quiet" / "config.json").exists() and (tmp_path / "shown" / "config.json").exists()


@pytest.mark.slow
def test_a_quiet_training_run_renders_no_table(
    tmp_path: Path, tables: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: one table per step (and one for the config), rendered and dropped."""
    caplog.set_level(logging.WARNING, logger=TABLE_LOGGER)
    result = asyncio.run(run_hello(hello_config(tmp_path, "sync", 2)))
    assert len(result.steps) == 2 and len(_rows(tmp_path)) >= 2
    assert tables == []
