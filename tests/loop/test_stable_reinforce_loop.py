"""``loss_fn="stable_reinforce"`` through the training loop (issue 37): Hello trained on the
in-process simulator, with the step trainer's two paths (whole step, streamed minibatches), and with
in-flight sampling clients (``sampling_client_kind="inflight"``).

The simulator refuses a ``stable_reinforce`` datum whose runs do not name sequences its sampling
clients recorded (``tests/loop/test_offpolicy_datums.py`` shows the refusal), so a step that trains
datums shows that the serving clients recorded stability info, that the endpoint wrote each call's
``sequence_id``, and that the datums kept their provenance up to ``forward_backward`` (the
cookbook's ``train_step`` drops it: this failed before). No datum is left out
(``datums/unrecorded`` 0)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from async_run import hello_config, run_hello

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::FutureWarning")]
STEPS = 2


@pytest.mark.parametrize("mode", ["sync", "stream", "inflight"])
def test_stable_reinforce_trains_hello_every_step(tmp_path: Path, mode: str) -> None:
    kind = "inflight" if mode == "inflight" else "snapshot"
    config = hello_config(
        tmp_path,
        "sync" if mode == "inflight" else mode,
        STEPS,
        loss_fn="stable_reinforce",
        loss_fn_config={"kl_coeff": 0.01},
        sampling_client_kind=kind,
    )
    result = asyncio.run(run_hello(config))
    assert [row["step"] for row in result.steps] == list(range(STEPS))
    for row in result.steps:
        assert row["train/datums"] > 0 and row["groups/trained"] > 0, row
        assert row["datums/unrecorded"] == 0, row
        assert row["optim/steps"] == 1, row
