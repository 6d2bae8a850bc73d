"""Client creation, resume and checkpoints, written once over a run's list of policies.

Policies are checkpointed together, so each step saved has one record per policy (a run's only
policy in ``log_path``, policy ``name`` of several in ``log_path/policies/<name>/``). Resuming
loads every policy from its checkpoint of the newest step all of them saved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinker_cookbook import checkpoint_utils
from tinker_cookbook.checkpoint_utils import CheckpointRecord

from agl_tinker.loop.checkpoints import (
    AtomicCheckpointIndex,
    no_usable_checkpoint,
    resume_candidates,
    set_aside,
)
from agl_tinker.loop.policy import Policy
from agl_tinker.run.layout import has_metrics
from agl_tinker.tinker_retry import (
    Retrier,
    RetryingSamplingClient,
    RetryingTrainingClient,
    TinkerCallError,
    is_transient,
)

__all__ = ["PolicyClients"]

logger = logging.getLogger(__name__)


class PolicyClients:
    """The Tinker side of a run's policies: training clients, KL references, checkpoints.

    Args:
        policies: the run's policies (a list of one for a single policy); their clients are set here.
        service: the Tinker ``ServiceClient`` (or the simulator's).
        retrier: bounds and counts every call's retries.
        log_path: the run's directory (metrics, and the single policy's checkpoint index).
        seed: the seed of fresh LoRA weights.
    """

    def __init__(
        self, policies: Sequence[Policy], service: Any, retrier: Retrier, log_path: str, seed: int
    ) -> None:
        self.policies = list(policies)
        self.service = service
        self.retrier = retrier
        self.log_path = log_path
        self.seed = seed
        self.latest: dict[str, dict[str, str]] = {}
        """Several policies only: each named policy's latest checkpoint paths."""

    async def create(self, policy: Policy, state_path: str | None) -> None:
        """``policy``'s LoRA training client: fresh, or loaded from ``state_path`` (weights + optimiser)."""
        if state_path is not None:
            client = await self.retrier.call(
                "create_training_client",
                lambda: self.service.create_training_client_from_state_with_optimizer(state_path),
            )
        else:
            client = await self.retrier.call(
                "create_training_client",
                lambda: self.service.create_lora_training_client(
                    policy.model_name, rank=policy.lora_rank, seed=self.seed
                ),
            )
        policy.training_client = RetryingTrainingClient(client, self.retrier)

    async def create_kl_references(self) -> None:
        """Each policy's KL reference: a sampling client of its own base model."""
        for policy in self.policies:
            policy.kl_reference = await self._base_sampling_client(policy.model_name)

    async def _base_sampling_client(self, model: str) -> RetryingSamplingClient:
        reference = await self.retrier.call(
            "create_sampling_client", lambda: self.service.create_sampling_client(base_model=model)
        )
        return RetryingSamplingClient(reference, self.retrier)

    async def resume(self, fresh_start: bool) -> CheckpointRecord | None:
        """Create every training client from the newest loadable step; the first policy's record.

        A step some policy cannot load (other than a Tinker outage, which raises) is reported by
        path and the previous one tried. Without any, a directory holding an earlier run's metrics
        is refused unless ``fresh_start``; with ``fresh_start`` its files are renamed aside and
        the run starts over.
        """
        if fresh_start:
            dirs = dict.fromkeys([Path(self.log_path), *(p.log_dir for p in self.policies)])
            for directory in dirs:
                for moved in set_aside(directory):
                    logger.warning("fresh_start: kept the earlier run's file as %s", moved)
            await self._start_fresh()
            return None
        candidates = [resume_candidates(p.log_dir) for p in self.policies]
        for record in candidates[0]:
            chosen = [_at_batch(found, record.batch) for found in candidates]
            if any(r is None for r in chosen):
                continue
            try:
                for policy, found in zip(self.policies, chosen, strict=True):
                    assert found is not None
                    await self.create(policy, found.state_path)
            except TinkerCallError as exc:
                if is_transient(exc.error):
                    raise  # the service is down, not the checkpoint
                logger.error(
                    "checkpoint %r (batch %s, %s) cannot be loaded, trying the previous one: %s",
                    record.name,
                    record.batch,
                    record.state_path,
                    exc.error,
                )
                continue
            self.latest = {
                p.name: _paths(r) for p, r in zip(self.policies, chosen, strict=True) if p.name and r
            }
            return record
        if any(candidates) or has_metrics(self.log_path):
            raise no_usable_checkpoint(self.policies[0].log_dir, candidates[0])
        await self._start_fresh()
        return None

    async def _start_fresh(self) -> None:
        for policy in self.policies:
            await self.create(policy, None)

    async def checkpoint(
        self, name: str, next_step: int, *, final: bool = False, extra: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """Checkpoint every policy into its directory; the first policy's paths.

        ``extra``: what the schedule must carry over a restart (the group ledger), next to
        ``batch`` (the step a resume starts at) and, for a policy of several, its name."""
        loop_state: dict[str, Any] = {**(extra or {}), "batch": next_step}
        if final:
            loop_state["final"] = True
        first: dict[str, str] | None = None
        for policy in self.policies:
            policy.log_dir.mkdir(parents=True, exist_ok=True)
            state = loop_state if policy.name is None else {**loop_state, "policy": policy.name}
            paths = await checkpoint_utils.save_checkpoint_async(
                policy.training_client,
                name,
                str(policy.log_dir),
                state,
                kind="both",
                store=AtomicCheckpointIndex(policy.log_dir),
            )
            if policy.name is not None:
                self.latest[policy.name] = paths
            first = paths if first is None else first
        assert first is not None
        return first


def _at_batch(records: Sequence[CheckpointRecord], batch: int | None) -> CheckpointRecord | None:
    """The newest of ``records`` (newest first) saved at ``batch``."""
    return next((r for r in records if r.batch == batch), None)


def _paths(record: CheckpointRecord) -> dict[str, str]:
    """A checkpoint record's paths, as ``save_checkpoint_async`` returns them."""
    paths = {"state_path": record.state_path, "sampler_path": record.sampler_path}
    return {k: v for k, v in paths.items() if v is not None}
