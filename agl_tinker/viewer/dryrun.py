"""Run any agent against a policy without training: ``agl-tinker dryrun`` and ``agl-tinker evaluate``.

The pieces are the training run's own: the endpoint serves the policy (the base model, or a
checkpoint's weights) and records every call, an Agent-lightning runner (:func:`fast_runner`,
the runner training uses) runs the agent in this process, :func:`dispatch_batch` enqueues the
tasks and collects each finished rollout, and the pure core rebuilds it exactly as a training
step would (so exclusions and drift are what training would see). The result is the rollouts'
transcript rows (:mod:`agl_tinker.viewer.transcripts`), every one detailed.
"""

from __future__ import annotations

import asyncio
import importlib
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DryRun", "Report", "dry_run", "load_agent", "load_task_list", "resolve_checkpoint", "score"]


@dataclass(frozen=True)
class DryRun:
    """What to run and against which policy."""

    model_name: str
    checkpoint: str | None = None
    """A sampler path (``tinker://...``) or a run's log path (its last checkpoint); ``None``: base model."""
    temperature: float = 1.0
    max_tokens: int = 256
    group_size: int = 1
    rollout_timeout_s: float | None = 300.0
    renderer_name: str | None = None


def load_agent(spec: str) -> Any:
    """``MODULE:NAME`` -> a LitAgent: the function a user passes to ``agl.rollout``, or its result.

    Raises:
        ValueError: ``spec`` is not ``MODULE:NAME``, or the name is not a function or LitAgent.
        ImportError: the module cannot be imported.
    """
    import agentlightning as agl

    obj = _import_attr(spec, "the agent")
    if isinstance(obj, agl.LitAgent):
        return obj
    if callable(obj):
        return agl.rollout(obj)
    raise ValueError(f"{spec} is a {type(obj).__name__}, not a rollout function or LitAgent")


def _import_attr(spec: str, what: str) -> Any:
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{what} must be given as MODULE:NAME (e.g. my_agent:rollout), got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"module {module_name} has no {name!r} ({what})") from None


def load_task_list(source: str, *, n: int | None = None, where: str | None = None) -> list[dict[str, Any]]:
    """Tasks from a file (``load_tasks`` formats) or a Python list or function, ``MODULE:NAME``.

    Args:
        source: a CSV/JSONL/JSON/Parquet path, or ``MODULE:NAME`` of a list of task dicts (or a
            function returning one).
        n: keep the first ``n`` tasks (after ``where``).
        where: ``FIELD=VALUE``: keep the tasks whose field has that value (e.g. ``split=val``).

    Raises:
        agl_tinker.loop.data.DatasetError: an unreadable file or a row that is not a task.
        ValueError: a bad ``where``, or no task left.
    """
    from agl_tinker.loop.data import load_tasks

    if Path(source).exists() or ":" not in source:
        tasks = load_tasks(source)
    else:
        obj = _import_attr(source, "the tasks")
        tasks = load_tasks(obj() if callable(obj) else obj)
    if where is not None:
        key, sep, value = where.partition("=")
        if not sep:
            raise ValueError(f"where must be FIELD=VALUE, got {where!r}")
        tasks = [t for t in tasks if str(t.get(key)) == value]
    tasks = tasks[:n] if n is not None else tasks
    if not tasks:
        raise ValueError(f"no tasks in {source}" + (f" with {where}" if where else ""))
    return [dict(t) for t in tasks]


def resolve_checkpoint(checkpoint: str) -> str:
    """A sampler path as given, or the sampler path of the last checkpoint of a run's log path."""
    if not Path(checkpoint).is_dir():
        return checkpoint
    from tinker_cookbook import checkpoint_utils

    record = checkpoint_utils.get_last_checkpoint(checkpoint, required_key="sampler_path")
    if record is None or record.sampler_path is None:
        raise ValueError(f"{checkpoint} holds no checkpoint with sampler weights (checkpoints.jsonl)")
    return record.sampler_path


async def dry_run(agent: Any, tasks: Sequence[Mapping[str, Any]], run: DryRun) -> list[dict[str, Any]]:
    """Run ``agent`` on ``tasks`` (``group_size`` times each) against the policy; one row per rollout.

    Returns:
        Transcript rows (:func:`~agl_tinker.viewer.transcripts.step_transcripts`), all detailed,
        in task then slot order; ``step`` is the policy's weights version (0).
    """
    from agl_tinker.heavy_import import import_agentlightning

    import_agentlightning()
    from agentlightning.execution.events import ThreadingEvent
    from agentlightning.store.memory import InMemoryLightningStore
    from agentlightning.types import RolloutConfig
    from tinker_cookbook import model_info

    from agl_tinker import backend
    from agl_tinker.algorithm import fast_runner
    from agl_tinker.core.trajectory import rollout_trajectory
    from agl_tinker.dispatch.batch import dispatch_batch
    from agl_tinker.dispatch.types import DispatchConfig
    from agl_tinker.endpoint.start import EndpointConfig, start_endpoint
    from agl_tinker.loop.batch_metrics import rollout_status
    from agl_tinker.loop.training_run import LLM_RESOURCE
    from agl_tinker.viewer.transcripts import step_transcripts
    from agl_tinker.viewer.writer import TokenTexts

    tokenizer = backend.get_tokenizer(run.model_name)
    service = backend.service_client()
    try:
        if run.checkpoint is not None:
            sampler = await service.create_sampling_client(model_path=resolve_checkpoint(run.checkpoint))
        else:
            sampler = await service.create_sampling_client(base_model=run.model_name)
        store = InMemoryLightningStore()
        endpoint = await start_endpoint(
            EndpointConfig(
                renderer_name=run.renderer_name or model_info.get_recommended_renderer_name(run.model_name),
                default_max_tokens=run.max_tokens,
            ),
            store=store,
            sampling_client=sampler,
            base_model=run.model_name,
            tokenizer=tokenizer,
        )
        runner = fast_runner()
        runner.init(agent)
        runner.init_worker(0, store)
        stop = ThreadingEvent()
        runner_task = asyncio.create_task(runner.iter(event=stop))
        try:
            llm = endpoint.as_resource()
            llm.sampling_parameters = {"temperature": run.temperature, "max_tokens": run.max_tokens}
            resources = await store.add_resources({LLM_RESOURCE: llm})
            batch = await dispatch_batch(
                store,
                tasks,
                run.group_size,
                lambda rollout, spans: rollout_trajectory(
                    spans, status=rollout_status(rollout), decode=tokenizer.decode
                ),
                config=DispatchConfig(
                    mode="val",
                    resources_id=resources.resources_id,
                    rollout_config=RolloutConfig(timeout_seconds=run.rollout_timeout_s),
                    stall_timeout_s=run.rollout_timeout_s + 5.0 if run.rollout_timeout_s else None,
                    before_read=endpoint.flush,
                ),
            )
        finally:
            stop.set()
            await asyncio.gather(runner_task, return_exceptions=True)
            runner.teardown_worker(0)
            runner.teardown()
            await endpoint.stop()
    finally:
        await backend.close_service(service)
    n = len(batch.outcomes)
    return step_transcripts(0, batch.groups, sample=n, token_text=TokenTexts(tokenizer.decode))


@dataclass(frozen=True)
class Report:
    """Rewards of an evaluation: over all scored rollouts, and per task."""

    rollouts: int
    scored: int
    mean: float | None
    stdev: float | None
    excluded: Mapping[str, int]
    per_task: Sequence[tuple[str, float | None, int]]
    """(task, mean reward of its scored rollouts, rollouts), in task order."""

    def lines(self) -> list[str]:
        mean = "n/a" if self.mean is None else f"{self.mean:+.3f}"
        spread = "" if self.stdev is None else f" ± {self.stdev:.3f} (stdev)"
        out = [f"reward: {mean}{spread} over {self.scored} scored of {self.rollouts} rollouts"]
        if self.excluded:
            out.append("excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(self.excluded.items())))
        out.append("per task:")
        for task, value, count in self.per_task:
            shown = "excluded" if value is None else f"{value:+.3f}"
            out.append(f"  {shown:>9}  ({count}x)  {task}")
        return out


def score(rows: Sequence[Mapping[str, Any]]) -> Report:
    """Mean, spread and per-task rewards of transcript rows (excluded rollouts counted apart)."""
    rewards = [r["reward"] for r in rows if r["reward"] is not None and r["exclusion"] is None]
    excluded: dict[str, int] = {}
    by_task: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["exclusion"] is not None:
            excluded[r["exclusion"]] = excluded.get(r["exclusion"], 0) + 1
        by_task.setdefault(r["group"], []).append(r)
    per_task = []
    for _, task_rows in sorted(by_task.items()):
        values = [r["reward"] for r in task_rows if r["reward"] is not None and r["exclusion"] is None]
        label = str(task_rows[0]["task"])
        per_task.append((label[:100], statistics.fmean(values) if values else None, len(task_rows)))
    return Report(
        rollouts=len(rows),
        scored=len(rewards),
        mean=statistics.fmean(rewards) if rewards else None,
        stdev=statistics.stdev(rewards) if len(rewards) > 1 else None,
        excluded=excluded,
        per_task=per_task,
    )
