"""Agent-lightning's ``Algorithm`` over the loop: ``agl.Trainer(algorithm=TinkerAlgorithm(...)).fit(agent, ...)``.

Also the runner the algorithm needs (:func:`fast_runner`) and the check that warns of one whose
rollouts would fail (:func:`check_runner`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import agentlightning as agl
from agentlightning.runner import LitAgentRunner
from agentlightning.tracer.agentops import AgentOpsTracer
from agentlightning.tracer.otel import OtelTracer

from agl_tinker.loop.config import TrainConfig
from agl_tinker.loop.preflight import check_setup
from agl_tinker.loop.train import TrainResult, train
from agl_tinker.run.claim import release_run
from agl_tinker.run.failures import summarise_failures
from agl_tinker.runners.deadline import DeadlineRunner
from agl_tinker.runners.tracing import repair_store_otlp_export

__all__ = ["IDLE_POLLS_PER_S", "TinkerAlgorithm", "check_runner", "fast_runner", "poll_interval_for"]

logger = logging.getLogger(__name__)

# Runner tracers must reach the store, not an OTLP collector at localhost:4318 (see tracing.py).
repair_store_otlp_export()


class TinkerAlgorithm(agl.Algorithm):
    """Runs :func:`agl_tinker.loop.train.train` against the trainer's store.

    The trainer's runners (processes it forks, or runners elsewhere connected to its store) run
    the agent; this algorithm serves the policy to them, trains on their traces and hot-swaps the
    weights. ``result`` holds the run's :class:`TrainResult` once ``fit`` returns.

    Building it claims ``config.log_path`` (:func:`~agl_tinker.loop.preflight.check_setup`); the
    claim is given up when :meth:`run` ends, failed or not (a claim held outside it, the CLI's,
    stays).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        required_fields: Sequence[str] = (),
        service: Any = None,
        show_progress: bool = True,
        on_step: Callable[[int, Mapping[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        check_setup(config, check_service=service is None)  # fail now, before any server or runner
        self._claimed = True  # check_setup claimed the log path: given up when the run ends
        self.config = config
        self.required_fields = tuple(required_fields)
        self.service = service
        self.show_progress = show_progress
        self.on_step = on_step
        self.result: TrainResult | None = None
        self.error: BaseException | None = None
        """What stopped the run, if it failed (the trainer's strategy may log it instead of raising)."""
        self._runner_stats: Mapping[str, int] = {}

    def set_trainer(self, trainer: Any) -> None:
        check_runner(trainer)
        super().set_trainer(trainer)
        # This package's strategies count the runner faults they see (LeanServerStrategy.stats,
        # Ray's included); the steps report restarts from them.
        stats = getattr(getattr(trainer, "strategy", None), "stats", None)
        self._runner_stats = stats if isinstance(stats, Counter) else {}

    async def run(  # type: ignore[override]
        self, train_dataset: Any = None, val_dataset: Any = None
    ) -> None:
        if train_dataset is None:
            raise ValueError("TinkerAlgorithm needs a train_dataset: pass it to Trainer.fit(...)")
        try:
            self.result = await train(
                self.config,
                self.get_store(),
                _as_task_source(train_dataset),
                _as_task_source(val_dataset) if val_dataset is not None else None,
                required_fields=self.required_fields,
                service=self.service,
                show_progress=self.show_progress,
                on_step=self.on_step,
                runner_stats=self._runner_stats,
            )
        except Exception as exc:
            self.error = exc
            raise
        finally:
            if self._claimed:
                self._claimed = False
                release_run(self.config)


def _as_task_source(dataset: Any) -> Any:
    """A dataset as :func:`agl_tinker.loop.train.train` takes it: a file path stays a path, anything else a list."""
    return dataset if isinstance(dataset, (str, os.PathLike)) else list(dataset)


IDLE_POLLS_PER_S = 500.0
"""What the runners of one run may ask an empty queue for, in all, per second: one empty dequeue
costs the store ~0.8 ms of CPU (``docs/scaling.md``), so this is ~0.4 of a store core."""


def poll_interval_for(n_runners: int) -> float:
    """``fast_runner``'s poll interval for ``n_runners`` sharing one store: 50 ms, or longer so that
    idle runners poll at most :data:`IDLE_POLLS_PER_S` times a second in all (0.05 s up to 25
    runners, 2 s for 1000). A new batch waits up to this long for a runner to take it."""
    if n_runners < 1:
        raise ValueError(f"n_runners must be >= 1, got {n_runners}")
    return max(0.05, n_runners / IDLE_POLLS_PER_S)


def fast_runner(
    poll_interval: float = 0.05,
    on_finished: Callable[[str, str, str], None] | None = None,
    cache_resources: bool = True,
) -> LitAgentRunner[Any]:
    """A runner that notices new rollouts within ``poll_interval`` (Agent-lightning's default is 5 s).

    It traces with plain OpenTelemetry: the endpoint already records every LLM call with its
    tokens, so the runner only needs to capture rewards and the agent's own spans. A rollout that
    runs past its ``timeout_seconds`` is cancelled and reported ``timeout`` (see
    :class:`agl_tinker.runners.deadline.DeadlineRunner`, which also calls ``on_finished``). It
    fetches each resources snapshot from the store once, not before every rollout
    (:mod:`agl_tinker.runners.resources_cache`): ``TinkerAlgorithm`` never changes a snapshot in
    place; pass ``cache_resources=False`` for an algorithm that does (``update_resources``).
    """
    summarise_failures()  # the first traceback of each distinct agent error, later ones counted
    return DeadlineRunner(
        OtelTracer(),
        poll_interval=poll_interval,
        interval_jitter=poll_interval / 5,
        on_finished=on_finished,
        cache_resources=cache_resources,
    )


def check_runner(trainer: Any) -> None:
    """Warn of a trainer whose runners would trace with AgentOps (Agent-lightning's default tracer).

    With the pinned versions, AgentOps records an assistant tool-call message as
    ``gen_ai.prompt.N.content=None``, which Agent-lightning's ``Span`` model rejects: every rollout
    of a tool-using agent fails inside the tracer (its OTLP exporter also errors on ``_headers``).
    The endpoint records every LLM call itself, so the runner needs no LLM instrumentation:
    :func:`fast_runner` traces with plain OpenTelemetry. Logged before any rollout runs; a trainer
    that only runs the algorithm (split mode) is not checked, its runners are built elsewhere.

    A warning, not an error: an agent without tool calls (rewarding with ``agl.emit_reward`` or by
    its return value) trains under the AgentOps tracer too (``agl_tinker.runners.tracing`` delivers its
    spans to the store), and Agent-lightning's docs set runners up that way.
    """
    if getattr(getattr(trainer, "strategy", None), "role", "both") == "algorithm":
        return
    tracer = getattr(getattr(trainer, "runner", None), "tracer", None)
    if isinstance(tracer, AgentOpsTracer):
        logger.warning(
            "the trainer's runner traces with AgentOps (Agent-lightning's default): every rollout whose "
            "agent makes tool calls will fail inside its tracer, and it polls for work every 5 s; use "
            "runner=agl_tinker.algorithm.fast_runner(). See the README, 'Runner'."
        )
