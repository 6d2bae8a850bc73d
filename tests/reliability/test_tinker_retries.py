"""Transient Tinker errors on every call kind are retried (bounded, counted); others fail at once."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import tinker
from reliability_harness import hello_config, run_hello

from agl_tinker.tinker_retry import Retrier, RetryPolicy, TinkerCallError, is_transient


def _status_error(cls: type[tinker.APIStatusError], status: int) -> tinker.APIStatusError:
    request = httpx.Request("POST", "https://tinker.invalid/api/v1/x")
    return cls("boom", response=httpx.Response(status, request=request), body=None)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_status_error(tinker.InternalServerError, 503), True),
        (_status_error(tinker.InternalServerError, 500), True),
        (_status_error(tinker.RateLimitError, 429), True),
        (_status_error(tinker.APIStatusError, 408), True),
        (tinker.APIConnectionError(request=httpx.Request("GET", "https://tinker.invalid")), True),
        (ConnectionResetError("reset by peer"), True),
        (_status_error(tinker.BadRequestError, 400), False),
        (_status_error(tinker.NotFoundError, 404), False),
        (ValueError("bad input"), False),
    ],
)
def test_transient_means_what_the_sdk_retries(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


async def test_a_transient_error_is_retried_with_capped_backoff_and_counted() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise _status_error(tinker.InternalServerError, 503)
        return "ok"

    retrier = Retrier(RetryPolicy(max_attempts=5, base_delay_s=0.001, max_delay_s=0.002))
    assert await retrier.call("optim_step", flaky) == "ok"
    assert calls == 3
    assert retrier.take_metrics() == {
        "tinker/retries": 2,
        "tinker/failures": 0,
        "tinker/retries/optim_step": 2,
    }
    assert retrier.take_metrics() == {"tinker/retries": 0, "tinker/failures": 0}  # per step, not cumulative


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=10.0, jitter=0.25)
    rng = random.Random(0)
    delays = [policy.delay_s(n, rng) for n in range(8)]
    for n, delay in enumerate(delays):
        nominal = min(0.5 * 2**n, 10.0)
        assert nominal * 0.75 <= delay <= min(nominal * 1.25, 10.0)
    assert max(delays) <= 10.0


async def test_bounded_attempts_then_an_error_naming_the_call() -> None:
    async def down() -> None:
        raise _status_error(tinker.InternalServerError, 503)

    retrier = Retrier(RetryPolicy(max_attempts=3, base_delay_s=0.0))
    with pytest.raises(TinkerCallError, match=r"forward_backward.*3 attempt") as caught:
        await retrier.call("forward_backward", down)
    assert caught.value.attempts == 3
    assert retrier.take_metrics()["tinker/failures/forward_backward"] == 1


async def test_a_non_retryable_error_fails_at_once_naming_the_call() -> None:
    calls = 0

    async def bad() -> None:
        nonlocal calls
        calls += 1
        raise _status_error(tinker.BadRequestError, 400)

    with pytest.raises(TinkerCallError, match=r"save_state.*non-retryable"):
        await Retrier(RetryPolicy(max_attempts=5, base_delay_s=0.0)).call("save_state", bad)
    assert calls == 1


@pytest.mark.slow
async def test_a_run_at_a_20_percent_failure_rate_on_every_call_kind_finishes(tmp_path: Path) -> None:
    """Every simulated call (client creation, sampling, forward_backward, optim_step, saves) fails
    at a seeded 20%: the run finishes all its steps and its metrics count the retries per kind."""
    config = hello_config(tmp_path / "run", max_steps=3, save_every=1, tinker_max_attempts=12)
    result = await run_hello(config, sim_dir=tmp_path / "sim", failure_rate=0.2, failure_seed=3)
    assert [s["step"] for s in result.steps] == [0, 1, 2]
    assert result.final_state_path is not None
    retried: dict[str, Any] = {}
    for step in result.steps:
        for key, value in step.items():
            if key.startswith("tinker/retries/"):
                retried[key] = retried.get(key, 0) + value
    assert sum(s["tinker/retries"] for s in result.steps) > 0
    for kind in ("sample", "forward_backward", "optim_step"):
        assert retried.get(f"tinker/retries/{kind}", 0) > 0, retried
    saves = ("save_state", "save_weights_for_sampler", "save_weights_and_get_sampling_client")
    assert sum(retried.get(f"tinker/retries/{kind}", 0) for kind in saves) > 0, retried
    assert all(s["train/datums"] > 0 for s in result.steps)


@pytest.mark.parametrize(
    ("operation", "kind"),
    [
        ("create_model", "create_training_client"),
        ("forward_backward", "forward_backward"),
        ("optim_step", "optim_step"),
        ("save_weights_for_sampler", "save_weights_and_get_sampling_client"),
    ],
)
async def test_a_call_kind_that_never_recovers_stops_the_run_naming_it(
    tmp_path: Path, operation: str, kind: str
) -> None:
    config = hello_config(tmp_path / "run", max_steps=1, tinker_max_attempts=2)
    with pytest.raises(TinkerCallError, match=kind):
        await run_hello(
            config,
            sim_dir=tmp_path / "sim",
            failure_rate=1.0,
            failure_operations=(operation,),
        )
