"""Every schedule trains the same way: (sync / stream / async) x (KL off / on) against the simulator.

Each case runs two short Hello steps in one process and asserts what the one loop promises in
every mode: datums trained every step, no group lost or trained twice, every finished rollout
released from the store, and the same metric keys in every mode (so curves of two modes compare).
Several policies are covered synchronously by ``test_policies.py``: ``TrainConfig`` still refuses
them with ``async_config``, ``stream_minibatch_config`` or a KL penalty.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from agentlightning.store.memory import InMemoryLightningStore
from async_run import BATCH, hello_config, run_hello

from agl_tinker.loop.ledger import LEDGER_FILE

STEPS = 2
MODES = ("sync", "stream", "async")

_DATA_DEPENDENT = ("excluded/", "rewards/problem/", "optim/", "tinker/", "kl_")
"""Key prefixes that depend on what the rollouts did or the service answered, not on the schedule."""


def _schedule_keys(row: dict[str, Any]) -> set[str]:
    return {k for k in row if k != "step" and not any(k.startswith(p) for p in _DATA_DEPENDENT)}


def _check_run(tmp_path: Path, mode: str, kl: bool) -> set[str]:
    """One two-step run of ``mode``; the schedule's metric keys of its steps."""
    store = InMemoryLightningStore()
    config = hello_config(tmp_path, mode, STEPS, kl_penalty_coef=0.05 if kl else 0.0, eval_every=0)
    result = asyncio.run(run_hello(config, store=store))

    assert [s["step"] for s in result.steps] == list(range(STEPS)), mode
    for s in result.steps:
        assert s["train/datums"] > 0, (mode, s)
        assert s["groups/trained"] + s["groups/dropped"] + s["groups/constant_removed"] == BATCH, (mode, s)
        assert s["rollouts/total"] == BATCH * 4 and "spans/written" in s and "rollouts/timeout" in s, (
            mode,
            s,
        )
        assert s["time/trainer_busy_s"] > 0, (mode, s)
        assert ("kl_policy_base" in s) is kl, (mode, sorted(s))
    if mode != "sync":  # the overlapped schedules keep a ledger of every group taken off the stream
        lines = [json.loads(x) for x in (tmp_path / LEDGER_FILE).read_text().splitlines()]
        final = [x["key"] for x in lines if x["outcome"] in ("trained", "excluded", "stale_dropped")]
        assert sorted(final) == list(range(STEPS * BATCH)), mode  # none lost, none twice
    assert asyncio.run(_rollouts_left(store)) == 0, mode  # every finished rollout released once read
    return set.union(*(_schedule_keys(s) for s in result.steps))


@pytest.mark.slow
@pytest.mark.parametrize("kl", [False, True], ids=["kl_off", "kl_on"])
def test_every_schedule_trains_each_step_once_per_group_releases_and_logs_the_same_keys(
    tmp_path: Path, kl: bool
) -> None:
    keys = {mode: _check_run(tmp_path / mode, mode, kl) for mode in MODES}
    for mode in MODES[1:]:
        assert keys[mode] == keys["sync"], (mode, sorted(keys[mode] ^ keys["sync"]))


async def _rollouts_left(store: InMemoryLightningStore) -> int:
    return len(list(await store.query_rollouts())) + await store.collections.spans.size()
