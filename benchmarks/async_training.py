"""Synchronous vs streaming vs asynchronous training under a Tinker-like cost model.

Run ``python benchmarks/async_training.py`` (``--steps``, ``--seeds``, ``--agents`` to change the
workload, ``--modes`` to run some modes only); prints one JSON line. Same agents, same cost model
(``cost_model`` in the JSON, the simulator's knobs), six modes per agent. A save-for-sampler writes
the weights (``save_sampler_s``) and serving replicas load them (``sampler_load_s``): a snapshot save
waits for both on the training queue, an in-flight save only for the write (the SDK's in-flight
contract; its weights reach samplers a load later). ``save_sampler_share`` states what a snapshot
save costs the queue, ``(save + load) / training`` per sync step, and ``inflight_save_share`` what an
in-flight save costs it, ``save / training`` (the worst over agents). The modes:

* ``sync``: the default loop (dispatch a batch, wait for its slowest rollout, train, swap);
* ``stream``: ``stream_minibatch_config`` with 4 minibatches (``forward_backward`` per minibatch as
  soon as its groups are complete; still one batch per step);
* ``async``: ``async_config`` with ``max_steps_off_policy=1`` (continuous dispatch; train as soon as a
  batch's worth of groups is complete; stale groups requeued or dropped);
* ``inflight_pace_is``: ``async`` with in-flight sampling clients (``sampling_client_kind="inflight"``)
  and pacing (``sampling_steps_ahead=1``) instead of requeuing, ``importance_sampling``;
* ``inflight_pace_sr``: the same with ``loss_fn="stable_reinforce"``;
* ``inflight_pace2_sr``: ``stable_reinforce`` paced two steps ahead (``max_steps_off_policy=2``).

Agents: ``hello`` (Hello 1024, one call) and ``lookup`` (two calls with a lookup tool between them
whose latency is log-normal: median 0.3 s, sigma 1, so one call in ~40 takes over 2 s). Both are
rolled out by 32 in-process runner slots (8 tasks x group 4 in flight) against an in-memory store.

Per agent and mode, averaged over the seeds: ``groups_per_s`` (groups taken per second from the end
of step 1 to the end of the last step: the first step, with start-up, is excluded),
``step_s_mean`` (over the same steps), ``trainer_idle_frac`` (share of those steps during which the
training client had no work: for ``sync``, ``1 - (training + swap) / step``), ``final_reward``
(mean training reward of the last 3 steps: for ``async`` these were sampled one version earlier,
so it lags a little), ``final_eval_reward`` (the run's final weights, evaluated after the last timed
step: each validation identity played ``EVAL_REPEATS`` times at the training temperature; this is
the trained policy's reward, with no sampling lag). ``speedup_async_vs_sync`` is the ratio of ``groups_per_s``;
``async_step_over_bound`` divides the async step time by ``max(sampling, training)`` per step as the
sync run measured them (its ``time/sampling_s`` and ``time/training_s + time/swap_s``): 1.0 is perfect
pipelining. It can fall below 1: continuous dispatch also removes the sync step's ramp-up and its wait for
the slowest rollout, so the async sampler delivers a batch faster than a sync sampling phase takes.
``async_step_over_training`` divides the async step by the training client's busy time per step in the async
run (1.0: the trainer never waits). Every overlapped mode gets ``<mode>_speedup_vs_sync`` and
``<mode>_step_over_bound`` the same way; its summary adds ``groups_discarded`` (stale groups requeued or
dropped: sampling thrown away, summed over the run), ``staleness_group_mean`` (versions behind, per
trained group), ``reward_vs_sync`` (its final reward minus sync's) and ``eval_vs_sync`` (its final
evaluation minus sync's), both also top-level as ``<mode>_reward_vs_sync`` and ``<mode>_eval_vs_sync``.
``speedup_at_bound`` is the
speedup an overlapped mode would reach at ``step_over_bound == 1.0`` (the sync step over
``max(sampling, training)``): when sampling is shorter than training, no overlap can beat it. Both are
sync's, whose training includes a snapshot save's load: in-flight modes do not queue the load, so
their training per step is ``sampler_load_s`` shorter, and their ``step_over_bound`` can fall below 1
and their speedup exceed ``speedup_at_bound``. Top-level figures are the worst over agents.
``detail`` has the per-seed numbers.

The run shares the machine's CPUs: ``load_avg`` (1/5/15-minute load averages at the start and at the
end) and each mode's ``cpu_s_per_step`` (this process's CPU time per timed step: agents, runners,
store, endpoint, loop and the simulator together) say how far CPU contention, not the cost model,
set the figures. The simulator's own compute runs inside each call's modelled duration (a floor
from submission, ``fakes.tinker.futures``), never on top of it (except an in-flight save's ~1.5 ms,
which takes effect as its write ends); it still competes for the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agentlightning as agl
from _stdout import emit_json, json_stdout  # benchmarks/ is on sys.path when a script runs
from agentlightning.store.memory import InMemoryLightningStore
from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

from agl_tinker import backend
from agl_tinker.examples.clients import openai_client
from agl_tinker.examples.hello.agent import hello_dataset, hello_rollout, prompt_for, score
from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.result import TrainResult
from agl_tinker.loop.train import train
from agl_tinker.runners.inprocess import AgentFn, InProcessRunners
from fakes.tinker.config import SimConfig

BATCH, GROUP = 8, 4
COST_MODEL = {
    # per call: 0.8 s to the first token, 30 ms per token (a Hello answer: ~1.1 s)
    "sample_ttft_s": 0.8,
    "sample_token_s": 0.03,
    # per step (32 Hello datums, ~800 tokens): ~2 s of forward_backward + optim + save
    "train_token_s": 0.0021,
    "optim_step_s": 0.1,
    # save-for-sampler: about a fifth of a step's training, split as the SDK's SamplingClientKind
    # contract splits it: writing the checkpoint (0.1 s, every save, serialised on the training queue)
    # and serving replicas loading it (0.3 s). A snapshot save returns a client serving its weights, so
    # it waits for the load: snapshot modes still pay 0.4 s on the queue. An in-flight save "does not
    # wait for serving replicas to finish loading weights": it pays 0.1 s on the queue and its weights
    # reach samplers 0.3 s later (calls of clients made at that save wait for them meanwhile).
    "save_sampler_s": 0.1,
    "sampler_load_s": 0.3,
}
_SIM = SimConfig(**COST_MODEL)  # the simulator's reading of the knobs (who waits for the load)
SAVE_QUEUE_S = {  # JSON key -> how long a save of that kind holds the training queue
    "save_sampler_share": _SIM.save_hold_s("snapshot"),  # write + load
    "inflight_save_share": _SIM.save_hold_s("inflight"),  # write only
}
MODES = ("sync", "stream", "async", "inflight_pace_is", "inflight_pace_sr", "inflight_pace2_sr")
PACED = {  # mode -> (sampling_steps_ahead, loss_fn)
    "inflight_pace_is": (1, "importance_sampling"),
    "inflight_pace_sr": (1, "stable_reinforce"),
    "inflight_pace2_sr": (2, "stable_reinforce"),
}
TOOL_MEDIAN_S, TOOL_SIGMA = 0.3, 1.0
TOP_LEVEL = ("_speedup_vs_sync", "_reward_vs_sync", "_eval_vs_sync", "_step_over_bound", "_discarded")
"""Suffixes of the per-agent figures reported top-level too, worst over agents (the lowest of the
``_vs_sync`` ones, the highest of the others)."""
EVAL_REPEATS = 4
"""Each of Hello's 24 validation identities is played this many times by the final evaluation."""


async def lookup_rollout(task: Mapping[str, Any], llm: agl.LLM) -> float:
    """Two turns: answer, look the identity up (long-tailed latency), answer again; scored on the last."""
    client = openai_client(llm.get_base_url(), llm.api_key)
    sampling: dict[str, Any] = dict(llm.sampling_parameters or {})
    params = {
        "temperature": float(sampling.get("temperature", 1.0)),
        "max_tokens": int(sampling.get("max_tokens", 32)),
    }
    identity = str(task["identity"])
    messages: list[dict[str, str]] = [{"role": "user", "content": "Who are you? Say it in one sentence."}]
    first = await client.chat.completions.create(model=llm.model, messages=messages, **params)  # type: ignore[arg-type, call-overload]
    messages.append({"role": "assistant", "content": first.choices[0].message.content or ""})
    await asyncio.sleep(random.lognormvariate(0.0, TOOL_SIGMA) * TOOL_MEDIAN_S)  # ok: the tool's latency
    messages.append({"role": "user", "content": f"The lookup tool says: {identity}. {prompt_for(identity)}"})
    second = await client.chat.completions.create(model=llm.model, messages=messages, **params)  # type: ignore[arg-type, call-overload]
    return score(second.choices[0].message.content or "", identity)


AGENTS: dict[str, AgentFn] = {"hello": hello_rollout, "lookup": lookup_rollout}  # type: ignore[dict-item]


def _config(log_path: str, mode: str, steps: int, seed: int) -> TrainConfig:
    extra: dict[str, Any] = {}
    if mode == "async":
        extra["async_config"] = AsyncConfig(max_steps_off_policy=1, groups_per_batch=BATCH)
    elif mode in PACED:
        ahead, loss_fn = PACED[mode]
        extra["async_config"] = AsyncConfig(max_steps_off_policy=ahead, groups_per_batch=BATCH)
        extra.update(sampling_steps_ahead=ahead, sampling_client_kind="inflight", loss_fn=loss_fn)
    elif mode == "stream":
        extra["stream_minibatch_config"] = StreamMinibatchConfig(groups_per_batch=BATCH, num_minibatches=4)
    return TrainConfig(
        log_path=log_path,
        max_steps=steps,
        batch_size=BATCH,
        group_size=GROUP,
        learning_rate=3e-2,
        lora_rank=8,
        max_tokens=32,
        seed=seed,
        rollout_timeout_s=120.0,
        # evaluation at the start and the end only, outside the timed steps, at the training temperature
        eval_every=steps,
        eval_temperature=1.0,
        **extra,
    )


async def _run(agent: AgentFn, mode: str, steps: int, seed: int) -> dict[str, Any]:
    random.seed(seed)
    ends: list[float] = []
    cpu: list[float] = []

    def on_step(_step: int, _metrics: Mapping[str, Any]) -> None:
        ends.append(time.perf_counter())
        cpu.append(time.process_time())

    with tempfile.TemporaryDirectory() as tmp:
        store = InMemoryLightningStore()
        service = backend.service_client(root_dir=Path(tmp) / "sim", **COST_MODEL)
        async with InProcessRunners(store, agent, concurrency=BATCH * GROUP):
            result = await train(
                _config(tmp, mode, steps, seed),
                store,
                hello_dataset("train"),
                hello_dataset("val") * EVAL_REPEATS,
                service=service,
                show_progress=False,
                on_step=on_step,
            )
    timed = result.steps[1:]
    step_s = [b - a for a, b in itertools.pairwise(ends)]
    if mode == "sync":
        idle = [1 - (s["time/training_s"] + s["time/swap_s"]) / d for s, d in zip(timed, step_s, strict=True)]
    else:
        idle = [s["time/trainer_idle_frac"] for s in timed]
    out: dict[str, Any] = {
        "groups_per_s": BATCH * len(step_s) / (ends[-1] - ends[0]),
        "step_s_mean": statistics.fmean(step_s),
        "trainer_idle_frac": statistics.fmean(idle),
        "final_reward": statistics.fmean(result.rewards[-3:]),
        "final_eval_reward": _final_eval(result, steps),
        "cpu_s_per_step": (cpu[-1] - cpu[0]) / len(step_s),
        "sampling_s_mean": statistics.fmean(s["time/sampling_s"] for s in timed),
        "training_s_mean": statistics.fmean(s["time/training_s"] + s["time/swap_s"] for s in timed),
    }
    if mode != "sync":
        out["sampler_idle_frac"] = statistics.fmean(s["time/sampler_idle_frac"] for s in timed)
        out["trainer_busy_s_mean"] = statistics.fmean(s["time/trainer_busy_s"] for s in timed)
        out["staleness_call_mean"] = statistics.fmean(s["staleness/call_mean"] for s in timed)
        out["staleness_group_mean"] = statistics.fmean(s["staleness/group_mean"] for s in result.steps)
        out["staleness_group_max"] = max(s["staleness/group_max"] for s in result.steps)
        out["datums_unrecorded"] = sum(s.get("datums/unrecorded", 0) for s in result.steps)
        out["stale_requeued"] = sum(s["async/stale_requeued"] for s in result.steps)
        out["stale_dropped"] = sum(s["async/stale_dropped"] for s in result.steps)
    return out


def _final_eval(result: TrainResult, steps: int) -> float:
    """The mean reward of the evaluation of the run's final weights."""
    final = result.evals[-1]
    if final["step"] != steps or final["eval/reward/mean"] is None:
        raise RuntimeError(f"the run did not evaluate its final weights at step {steps}: {result.evals}")
    return float(final["eval/reward/mean"])


def _mean_over_seeds(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = (
        "groups_per_s",
        "step_s_mean",
        "trainer_idle_frac",
        "final_reward",
        "final_eval_reward",
        "cpu_s_per_step",
    )
    return {k: round(statistics.fmean(r[k] for r in runs), 4) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--agents", default="hello,lookup")
    parser.add_argument("--modes", default=",".join(MODES), help="sync first; the others compare to it")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "sync" or not set(modes) <= set(MODES):
        parser.error(f"--modes: sync first, then any of {MODES[1:]}")
    warnings.simplefilter("ignore", FutureWarning)
    logging.disable(logging.WARNING)
    report: dict[str, Any] = {
        "load_avg": {"start": [round(x, 2) for x in os.getloadavg()]},
        "cost_model": COST_MODEL,
        "save_sampler_share": None,  # a snapshot save's queue time over the sync run's training per step
        "inflight_save_share": None,  # an in-flight save's queue time over the same
        "steps": args.steps,
        "seeds": args.seeds,
        "detail": {},
    }
    worst: dict[str, list[float]] = {}
    for name in args.agents.split(","):
        runs = {
            mode: [asyncio.run(_run(AGENTS[name], mode, args.steps, seed)) for seed in range(args.seeds)]
            for mode in modes
        }
        summary = _summary(runs)
        report[name] = summary
        report["detail"][name] = {
            mode: [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rs]
            for mode, rs in runs.items()
        }
        for key, queue_s in SAVE_QUEUE_S.items():
            share = summary["sync_training_s"] and queue_s / summary["sync_training_s"]
            report[key] = round(max(report[key] or 0.0, share), 3)
        for key, value in summary.items():
            if key.endswith(TOP_LEVEL):
                worst.setdefault(key, []).append(value)
    for key, values in worst.items():
        report[key] = min(values) if key.endswith("_vs_sync") else max(values)
    report["load_avg"]["end"] = [round(x, 2) for x in os.getloadavg()]
    emit_json(report)


def _summary(runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One agent's figures: per mode, its seeds' mean; per overlapped mode, its ratios to sync."""
    summary: dict[str, Any] = {mode: _mean_over_seeds(r) for mode, r in runs.items()}
    sync = summary["sync"]
    sync_bound = statistics.fmean(max(r["sampling_s_mean"], r["training_s_mean"]) for r in runs["sync"])
    summary["sync_sampling_s"] = round(statistics.fmean(r["sampling_s_mean"] for r in runs["sync"]), 3)
    summary["sync_training_s"] = round(statistics.fmean(r["training_s_mean"] for r in runs["sync"]), 3)
    summary["speedup_at_bound"] = round(sync["step_s_mean"] / sync_bound, 3)
    for mode, mode_runs in runs.items():
        if mode == "sync":
            continue
        figures = summary[mode]
        figures["groups_discarded"] = statistics.fmean(
            r["stale_requeued"] + r["stale_dropped"] for r in mode_runs
        )
        figures["staleness_group_mean"] = round(
            statistics.fmean(r["staleness_group_mean"] for r in mode_runs), 3
        )
        figures["staleness_group_max"] = max(r["staleness_group_max"] for r in mode_runs)
        figures["reward_vs_sync"] = round(figures["final_reward"] - sync["final_reward"], 4)
        figures["eval_vs_sync"] = round(figures["final_eval_reward"] - sync["final_eval_reward"], 4)
        summary[f"{mode}_speedup_vs_sync"] = round(figures["groups_per_s"] / sync["groups_per_s"], 3)
        summary[f"{mode}_step_over_bound"] = round(figures["step_s_mean"] / sync_bound, 3)
        summary[f"{mode}_reward_vs_sync"] = figures["reward_vs_sync"]
        summary[f"{mode}_eval_vs_sync"] = figures["eval_vs_sync"]
        if mode != "stream":
            summary[f"{mode}_discarded"] = figures["groups_discarded"]
        if mode == "async":  # the names earlier runs reported
            summary["speedup_async_vs_sync"] = summary["async_speedup_vs_sync"]
            summary["async_step_over_bound"] = summary["async_step_over_bound"]
            busy = statistics.fmean(r["trainer_busy_s_mean"] for r in mode_runs)
            summary["async_step_over_training"] = round(figures["step_s_mean"] / busy, 3)
    return summary


if __name__ == "__main__":
    with json_stdout():
        main()
