"""The schedules on their own: which one a config picks, how far ahead the continuous one
dispatches, and which groups a resumed run dispatches again; the run lock around ``train``."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tinker_cookbook.checkpoint_utils import CheckpointRecord
from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.data import build_datasets
from agl_tinker.loop.errors import StoreLost
from agl_tinker.loop.schedules import BatchSchedule, ContinuousSchedule, groups_ahead, pick_schedule
from agl_tinker.loop.train import claimed
from agl_tinker.run.claim import claim_run, release_run
from agl_tinker.run.failures import RUN_LOG
from agl_tinker.run.lock import holds

BATCH = 4


def _config(tmp_path: Path, mode: str, off_policy: int = 1) -> TrainConfig:
    extra: dict[str, Any] = {}
    if mode == "async":
        extra["async_config"] = AsyncConfig(max_steps_off_policy=off_policy, groups_per_batch=BATCH)
    elif mode == "stream":
        extra["stream_minibatch_config"] = StreamMinibatchConfig(groups_per_batch=BATCH, num_minibatches=2)
    return TrainConfig(log_path=str(tmp_path), batch_size=BATCH, group_size=2, **extra)


def _run(config: TrainConfig) -> Any:
    tasks = [{"identity": str(i)} for i in range(3 * BATCH)]
    train_ds, _ = build_datasets(tasks, batch_size=BATCH, group_size=2, n_epochs=1, seed=0)
    return SimpleNamespace(config=config, train_ds=train_ds, n_steps=len(train_ds))


@pytest.mark.parametrize(
    ("mode", "kind", "streams", "asynchronous"),
    [
        ("sync", BatchSchedule, False, False),
        ("stream", ContinuousSchedule, True, False),
        ("async", ContinuousSchedule, False, True),
    ],
)
def test_the_config_picks_the_schedule(
    tmp_path: Path, mode: str, kind: type, streams: bool, asynchronous: bool
) -> None:
    schedule = pick_schedule(_run(_config(tmp_path, mode)), None, 0)
    assert type(schedule) is kind
    assert (schedule.stream is not None) is streams
    assert getattr(schedule, "asynchronous", False) is asynchronous
    assert schedule.checkpoint_state() == (
        {} if mode == "sync" else {"async_done_below": 0, "async_done": []}
    )


@pytest.mark.parametrize(
    ("mode", "off_policy", "ahead"), [("stream", 1, BATCH), ("async", 0, BATCH), ("async", 3, 3 * BATCH)]
)
def test_the_continuous_schedule_dispatches_about_max_steps_off_policy_batches_ahead(
    tmp_path: Path, mode: str, off_policy: int, ahead: int
) -> None:
    assert groups_ahead(_config(tmp_path, mode, off_policy)) == ahead


def test_a_resumed_continuous_schedule_dispatches_only_the_groups_not_done(tmp_path: Path) -> None:
    record = CheckpointRecord(
        name="000001", batch=1, extra={"async_done_below": 3, "async_done": [5, 9]}, state_path="s"
    )
    schedule = ContinuousSchedule(_run(_config(tmp_path, "async")), record, 1)
    keys = [r.key for r in schedule._requests(0, 3)]
    assert keys == [k for k in range(3 * BATCH) if k not in {0, 1, 2, 5, 9}]
    assert all(r.attempt == 0 for r in schedule._requests(0, 3))


class _Dispatcher:
    """Stands in for the continuous dispatcher: records what is submitted, has no groups."""

    def __init__(self) -> None:
        self.submitted: list[Any] = []
        self.read_s = 0.0
        self.pending_groups = self.running_groups = self.waiting_groups = 0

    async def submit(self, requests: Any, *, front: bool = False) -> None:
        self.submitted.extend(requests)


@pytest.mark.parametrize("mode", ["stream", "async"])
async def test_the_continuous_schedule_checks_the_store_before_each_step(tmp_path: Path, mode: str) -> None:
    """A restarted store is noticed at the step's start with the run's message, as the batch
    schedule notices it, not later through whatever the dispatcher's store calls raise."""
    run = _run(_config(tmp_path, mode))
    checked: list[int] = []

    async def check_store(step: int) -> None:
        checked.append(step)
        raise StoreLost(f"lost the LightningStore during step {step}")

    run.check_store = check_store
    schedule = ContinuousSchedule(run, None, 0)
    dispatcher = _Dispatcher()
    schedule._dispatcher = dispatcher  # type: ignore[assignment]
    with pytest.raises(StoreLost, match="during step 1"):
        await schedule.fill(SimpleNamespace(step=1))  # type: ignore[arg-type]
    assert checked == [1] and dispatcher.submitted == []


def test_train_ending_inside_an_outer_claim_leaves_the_lock_and_the_run_log_to_it(tmp_path: Path) -> None:
    """The CLI and ``TinkerAlgorithm`` claim the log path before ``train`` does: the end of
    ``train`` (``claimed``) used to release the lock and close ``run.log`` under them."""
    config = TrainConfig(log_path=str(tmp_path))
    claim_run(config)  # the outer claim (check_setup)
    try:
        with claimed(config):
            assert holds(tmp_path)
        assert holds(tmp_path)
        logging.getLogger("agl_tinker.test").warning("after train, before the command ends")
    finally:
        release_run(config)
    assert not holds(tmp_path)
    assert "after train, before the command ends" in (tmp_path / RUN_LOG).read_text()


def test_the_run_lock_is_held_inside_claimed_and_released_when_it_raises(tmp_path: Path) -> None:
    config = TrainConfig(log_path=str(tmp_path))
    with pytest.raises(RuntimeError, match="inside"), claimed(config):
        assert holds(tmp_path)
        raise RuntimeError("inside")
    assert not holds(tmp_path)
