"""Codex CLI and opencode, installed from npm and run unchanged against the endpoint (issue 32):
a tool-using episode is one token sequence with no drift and every tool call it sent back matched,
and one training step runs on its datums. Skipped, saying why, when npm or the packages cannot
be had."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tinker
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.threading import LightningStoreThreaded
from harnesses import harness_bin, run_codex, run_opencode

from agl_tinker import spans as S
from agl_tinker.backend import get_tokenizer
from agl_tinker.core.trajectory import rollout_trajectory
from agl_tinker.endpoint.start import EndpointConfig, start_endpoint

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    found = harness_bin()
    if isinstance(found, str):
        pytest.skip(found)
    return found


class HarnessSampler:
    """Plays a coding agent's policy: a title when asked for one, one shell tool call, then done."""

    def __init__(self, tokenizer: Any, call: str) -> None:
        self.tokenizer, self.call = tokenizer, call

    async def sample(self, prompt: tinker.ModelInput, num_samples: int, sampling_params: Any) -> Any:
        seen = self.tokenizer.decode(prompt.to_ints()[-4000:])
        if "title generator" in seen:
            text = "Listing files"
        elif "<tool_response>" in seen:
            text = "Done."
        else:
            text = f"<tool_call>\n{self.call}\n</tool_call>"
        tokens = [*self.tokenizer.encode(text, add_special_tokens=False), 151645][
            : sampling_params.max_tokens
        ]
        sequence = tinker.SampledSequence(
            stop_reason="stop",
            sequence_id="harness",
            tokens_np=np.array(tokens, dtype=np.int32),
            logprobs_np=np.full(len(tokens), -0.5, dtype=np.float32),
        )
        return tinker.SampleResponse(sequences=[sequence])


@asynccontextmanager
async def _rollout_url(call: str) -> AsyncIterator[tuple[str, Callable[[], Any]]]:
    tokenizer = get_tokenizer(MODEL)
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(),
        store=store,
        sampling_client=HarnessSampler(tokenizer, call),
        base_model=MODEL,
        tokenizer=tokenizer,
    )
    rollout = await store.start_rollout(input={})
    url = endpoint.as_resource(rollout.rollout_id, rollout.attempt.attempt_id).get_base_url()

    async def trajectory() -> Any:
        await endpoint.flush()
        spans = await store.query_spans(rollout.rollout_id)
        return rollout_trajectory(spans, status=None, decode=tokenizer.decode)

    try:
        yield url, trajectory
    finally:
        await endpoint.stop()


def _check_one_sequence(trajectory: Any, api: str) -> None:
    calls = trajectory.reconstruction.calls
    assert len(calls) == 2, [c.completion for c in calls]
    assert all(c.attributes[S.AGL_API] == api for c in calls)
    (issued,) = calls[0].completion["tool_calls"]
    answered = [m for m in calls[1].messages if m.get("role") == "tool"]
    assert [m["tool_call_id"] for m in answered] == [issued["id"]]
    alignment = trajectory.alignment
    assert len(alignment.sequences) == 1 and not alignment.drift, alignment.drift
    print(
        api,
        {
            "calls_per_episode": len(calls),
            "sequences": len(alignment.sequences),
            "drift": len(alignment.drift),
        },
    )


async def test_codex_exec_tool_episode_is_one_sequence(bin_dir: Path, tmp_path: Path) -> None:
    async with _rollout_url('{"name": "exec_command", "arguments": {"cmd": "ls"}}') as (url, trajectory):
        done = await asyncio.to_thread(run_codex, bin_dir, url, MODEL, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        _check_one_sequence(await trajectory(), "responses")


async def test_opencode_run_tool_episode_is_one_sequence(bin_dir: Path, tmp_path: Path) -> None:
    call = '{"name": "glob", "arguments": {"pattern": "*"}}'  # bash is denied, so not offered
    async with _rollout_url(call) as (url, trajectory):
        done = await asyncio.to_thread(run_opencode, bin_dir, url, MODEL, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        _check_one_sequence(await trajectory(), "chat.completions")
