"""Codex CLI and opencode, installed from npm and run unchanged against the endpoint (issue 32):
a tool-using episode is one token sequence with no drift and every tool call it sent back matched,
and one training step on a group of two such episodes (rewarded 1 and 0) moves the policy toward
the rewarded one (its logprob rises against the other's). Skipped, saying why, when npm or the
packages cannot be had."""

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
from harnesses import TASK_PROMPT, harness_bin, run_codex, run_opencode, train_one_step

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


OTHER_TASK = "List every file here, hidden ones too, then say done."


class HarnessSampler:
    """Plays a coding agent's policy: a title when asked for one, one tool call (the one ``calls``
    gives for the task in the prompt), then done."""

    def __init__(self, tokenizer: Any, calls: dict[str, str]) -> None:
        self.tokenizer, self.calls = tokenizer, calls

    async def sample(self, prompt: tinker.ModelInput, num_samples: int, sampling_params: Any) -> Any:
        seen = self.tokenizer.decode(prompt.to_ints()[-4000:])
        if "title generator" in seen:
            text = "Listing files"
        elif "<tool_response>" in seen:
            text = "Done."
        else:
            (call,) = [call for task, call in self.calls.items() if task in seen]
            text = f"<tool_call>\n{call}\n</tool_call>"
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
async def _rollout_urls(calls: dict[str, str]) -> AsyncIterator[tuple[list[str], Callable[[], Any]]]:
    """One endpoint and one rollout per task of ``calls``: their URLs, and a function returning
    their trajectories (in the same order) once the harnesses are done."""
    tokenizer = get_tokenizer(MODEL)
    store = LightningStoreThreaded(InMemoryLightningStore())
    endpoint = await start_endpoint(
        EndpointConfig(),
        store=store,
        sampling_client=HarnessSampler(tokenizer, calls),
        base_model=MODEL,
        tokenizer=tokenizer,
    )
    rollouts = [await store.start_rollout(input={}) for _ in calls]
    urls = [endpoint.as_resource(r.rollout_id, r.attempt.attempt_id).get_base_url() for r in rollouts]

    async def trajectories() -> list[Any]:
        await endpoint.flush()
        return [
            rollout_trajectory(await store.query_spans(r.rollout_id), status=None, decode=tokenizer.decode)
            for r in rollouts
        ]

    try:
        yield urls, trajectories
    finally:
        await endpoint.stop()


async def _run_group(
    run: Callable[..., Any], bin_dir: Path, calls: dict[str, str], tmp_path: Path, api: str
) -> None:
    """Run the harness once per task, concurrently; check each episode is one sequence; train one
    step on the two, the first rewarded 1 and the second 0."""
    async with _rollout_urls(calls) as (urls, trajectories):
        done = await asyncio.gather(
            *(
                asyncio.to_thread(run, bin_dir, url, MODEL, tmp_path / str(i), task)
                for i, (url, task) in enumerate(zip(urls, calls, strict=True))
            )
        )
        for finished in done:
            assert finished.returncode == 0, finished.stderr[-2000:]
        episodes = await trajectories()
    for episode in episodes:
        _check_one_sequence(episode, api)
    datums, moved = await asyncio.to_thread(
        train_one_step, [e.alignment for e in episodes], [1.0, 0.0], MODEL
    )
    assert datums == 2  # one sequence per episode: one datum each
    # The two episodes share most of their sampled tokens ("Done.", the tool call's syntax), which a
    # +1/-1 advantage pair moves the same way, so the step promises the gap, not each sign: 0.19-0.30
    # in 18 runs (a lone moved[0] ranged -0.01..0.18), 0.0 with learning_rate 1e-9.
    assert moved[0] - moved[1] > 0.05, moved


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


async def test_codex_exec_tool_episodes_are_one_sequence_each_and_train(
    bin_dir: Path, tmp_path: Path
) -> None:
    calls = {
        TASK_PROMPT: '{"name": "exec_command", "arguments": {"cmd": "ls"}}',
        OTHER_TASK: '{"name": "exec_command", "arguments": {"cmd": "ls -a"}}',
    }
    await _run_group(run_codex, bin_dir, calls, tmp_path, "responses")


async def test_opencode_run_tool_episodes_are_one_sequence_each_and_train(
    bin_dir: Path, tmp_path: Path
) -> None:
    calls = {  # bash is denied, so not offered
        TASK_PROMPT: '{"name": "glob", "arguments": {"pattern": "*"}}',
        OTHER_TASK: '{"name": "glob", "arguments": {"pattern": "**/*"}}',
    }
    await _run_group(run_opencode, bin_dir, calls, tmp_path, "chat.completions")
