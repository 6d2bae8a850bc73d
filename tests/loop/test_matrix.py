"""Every combination of modes trains the same way, against the simulator:
(sync / stream / async) x (one policy / two policies) x (KL off / on).

Each case runs two short steps in one process (Hello for one policy; for two, the Duet's episode:
the speaker and the checker are two LoRAs, each trained on the episode's reward) and asserts what the one loop promises in every mode: datums
trained every step by every policy, no group lost or trained twice, every finished rollout
released from the store, and the same metric keys in every mode (so curves of two modes compare).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import agentlightning as agl
import pytest
from agentlightning.store.memory import InMemoryLightningStore
from async_run import BATCH, GROUP, hello_config, run_hello

from agl_tinker.examples.clients import openai_client
from agl_tinker.examples.duet.agent import CHECKER, SPEAKER, checker_prompt, duet_dataset, rewards, verdict
from agl_tinker.examples.hello.agent import prompt_for, score
from agl_tinker.loop.config import PolicyConfig
from agl_tinker.loop.ledger import LEDGER_FILE

STEPS = 2
MODES = ("sync", "stream", "async")
DUET = (SPEAKER, CHECKER)

_DATA_DEPENDENT = ("excluded/", "rewards/problem/", "optim/", "tinker/", "kl_")
"""Key prefixes that depend on what the rollouts did or the service answered, not on the schedule."""


def _schedule_keys(row: dict[str, Any]) -> set[str]:
    def data_dependent(key: str) -> bool:
        bare = key.split("/", 2)[2] if key.startswith("policy/") else key
        return any(bare.startswith(p) for p in _DATA_DEPENDENT)

    return {k for k in row if k != "step" and not data_dependent(k)}


async def _ask(llm: agl.LLM, model: str, prompt: str) -> str:
    client = openai_client(llm.get_base_url(), llm.api_key)
    response = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=32
    )
    return response.choices[0].message.content or ""


async def _duet_episode(task: dict[str, Any], llm: agl.LLM) -> float:
    """The Duet's episode (the speaker's call, then the checker's, each served by its own policy),
    rewarded with both agents' scores summed (the in-process runners store one reward per rollout)."""
    identity = task["identity"]
    reply = await _ask(llm, SPEAKER, prompt_for(identity))
    said = verdict(await _ask(llm, CHECKER, checker_prompt(identity, reply)))
    each = rewards(score(reply, identity), said)
    return each[SPEAKER] + each[CHECKER]


def _run(tmp_path: Path, mode: str, n_policies: int, kl: bool, store: InMemoryLightningStore) -> Any:
    overrides: dict[str, Any] = {"kl_penalty_coef": 0.05 if kl else 0.0, "eval_every": 0}
    if n_policies == 1:
        return asyncio.run(run_hello(hello_config(tmp_path, mode, STEPS, **overrides), store=store))
    policies = {name: PolicyConfig() for name in DUET}
    config = hello_config(tmp_path, mode, STEPS, policies=policies, **overrides)
    return asyncio.run(
        run_hello(config, store=store, agent=_duet_episode, tasks=duet_dataset("train"))  # type: ignore[arg-type]
    )


def _check_run(tmp_path: Path, mode: str, n_policies: int, kl: bool) -> set[str]:
    """One two-step run of ``mode``; the schedule's metric keys of its steps."""
    store = InMemoryLightningStore()
    result = _run(tmp_path, mode, n_policies, kl, store)
    case = (mode, n_policies, kl)
    assert [s["step"] for s in result.steps] == list(range(STEPS)), case
    prefixes = [""] if n_policies == 1 else [f"policy/{name}/" for name in DUET]
    for s in result.steps:
        assert s["rollouts/total"] == BATCH * GROUP and "spans/written" in s and "rollouts/timeout" in s, (
            case,
            s,
        )
        assert s["time/trainer_busy_s"] > 0, (case, s)
        for p in prefixes:
            assert s[f"{p}train/datums"] > 0, (case, p, s)
            groups = s[f"{p}groups/trained"] + s[f"{p}groups/dropped"] + s[f"{p}groups/constant_removed"]
            assert groups == BATCH, (case, p, s)
            assert (f"{p}kl_policy_base" in s) is kl, (case, p, sorted(s))
            assert s[f"{p}staleness/group_max"] <= 1, (case, p, s)  # each policy's own calls
        if n_policies > 1:
            assert s["train/datums"] == sum(s[f"{p}train/datums"] for p in prefixes), (case, s)
            assert s["calls/unowned"] == 0, (case, s)
    if mode != "sync":  # the overlapped schedules keep a ledger of every group taken off the stream
        lines = [json.loads(x) for x in (tmp_path / LEDGER_FILE).read_text().splitlines()]
        final = [x["key"] for x in lines if x["outcome"] in ("trained", "excluded", "stale_dropped")]
        assert sorted(final) == list(range(STEPS * BATCH)), case  # none lost, none twice
    assert asyncio.run(_rollouts_left(store)) == 0, case  # every finished rollout released once read
    return set.union(*(_schedule_keys(s) for s in result.steps))


@pytest.mark.slow
@pytest.mark.parametrize("kl", [False, True], ids=["kl_off", "kl_on"])
@pytest.mark.parametrize("n_policies", [1, 2], ids=["one_policy", "two_policies"])
def test_every_schedule_trains_each_step_once_per_group_releases_and_logs_the_same_keys(
    tmp_path: Path, n_policies: int, kl: bool
) -> None:
    keys = {mode: _check_run(tmp_path / mode, mode, n_policies, kl) for mode in MODES}
    for mode in MODES[1:]:
        assert keys[mode] == keys["sync"], (mode, sorted(keys[mode] ^ keys["sync"]))


async def _rollouts_left(store: InMemoryLightningStore) -> int:
    return len(list(await store.query_rollouts())) + await store.collections.spans.size()
