"""``retrieve_futures``: with ``sample_use_retrieve_futures`` on in the served client config, the
unmodified SDK waits for samples through its per-session poller (it was a 404)."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path

import pytest
import tinker
from tinker import types

from fakes.tinker import SimConfig
from fakes.tokenizer import load_tokenizer
from fakes.wire import start_in_thread
from fakes.wire.feeds import Feed
from fakes.wire.futures import PromiseTable

MODEL = "Qwen/Qwen3-4B-Instruct-2507"


async def test_a_feed_reports_completions_after_the_cursor_and_trims_the_seen() -> None:
    table, feed = PromiseTable(asyncio.get_running_loop()), Feed()
    first, second = table.new(), table.new()
    feed.watch(first)
    feed.watch(second)
    assert (await feed.poll(0, 0)).completions == []
    waiting = asyncio.create_task(feed.poll(0, 10.0))
    await asyncio.sleep(0)
    first.settle("one")
    answer = await waiting
    assert [c.request_id for c in answer.completions] == [first.request_id] and answer.cursor == 1
    second.settle(error=ValueError("bad"))
    await asyncio.sleep(0)
    later = await feed.poll(answer.cursor, 0)
    assert [(c.request_id, c.state) for c in later.completions] == [(second.request_id, "failed")]
    assert (await feed.poll(later.cursor, 0)).completions == []


@pytest.mark.slow
def test_the_sdk_samples_through_retrieve_futures_when_the_config_turns_it_on(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", FutureWarning)
    config = {"sample_use_retrieve_futures": True}
    with start_in_thread(SimConfig(root_dir=tmp_path), client_config=config) as server:
        service = tinker.ServiceClient(base_url=server.url, api_key="tml-test")
        sampler = service.create_sampling_client(base_model=MODEL).result()
        text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        prompt = types.ModelInput.from_ints(load_tokenizer(MODEL).encode(text))
        params = types.SamplingParams(max_tokens=6, seed=3)

        async def many() -> list[types.SampleResponse]:
            return list(await asyncio.gather(*(sampler.sample(prompt, 2, params) for _ in range(5))))

        answers = asyncio.run(many())
        assert all(len(a.sequences) == 2 for a in answers)
        wire = server.server.service
        assert wire.feeds._feeds, "the SDK never polled retrieve_futures"
        deadline = time.monotonic() + 10  # retrieved payloads are reported on the poller's next poll
        while len(wire.promises) > 0 and time.monotonic() < deadline:
            sampler.sample(prompt, 1, params).result()
            if len(wire.promises) <= 1:
                break
        assert len(wire.promises) <= 1
        service.close("success").result()
