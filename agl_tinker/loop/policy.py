"""The policies of a run, as data: a run trains a list of :class:`Policy`; one policy is a list of one.

Each policy has its own LoRA training client, optimiser settings, KL reference, tokenizer and
renderer, checkpoint directory, and its own reading of every rollout: the rollouts are shared,
and each is read once per policy keeping only that policy's calls (the core's
``model_match``/``agent_match``), so a call is trained only on the policy that sampled it. A call
no policy owns is counted (``calls/unowned``) and trained on none.

The single policy of a run without ``TrainConfig.policies`` is named ``None``: its metrics carry
no prefix and its checkpoints live in ``log_path`` itself. Policy ``name`` of several writes under
``policy/<name>/`` and ``log_path/policies/<name>/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tinker_cookbook import model_info

from agl_tinker import backend
from agl_tinker.core.reconstruct import ReconstructOptions
from agl_tinker.core.rewards import RewardOptions
from agl_tinker.core.trajectory import RolloutTrajectory
from agl_tinker.dispatch.types import BatchResult, GroupResult, RolloutOutcome
from agl_tinker.loop.config import PROVENANCE_LOSSES, TrainConfig
from agl_tinker.loop.step_trainer import Learner
from agl_tinker.run.layout import policy_dir

__all__ = ["Policy", "PolicyResults", "make_policies", "policy_view", "unowned_calls"]

PolicyResults = dict[str | None, RolloutTrajectory]
"""One rollout read once per policy: policy name (``None`` for a run's only policy) -> its trajectory."""


@dataclass
class Policy:
    """One trained policy of a run: its settings, its reading of rollouts, and its clients.

    Attributes:
        name: the policy's name among several; ``None`` for a run's only policy.
        model_name, lora_rank, learning_rate, num_substeps: its base model and optimiser settings.
        models: the ``model`` names that reach it (several policies only; empty for one).
        tokenizer, renderer_name: how its calls are rendered and decoded.
        reconstruct_options, reward_options: how the core reads its calls and rewards.
        log_dir: where its checkpoint index is written.
        training_client: its (retrying) training client, once created.
        kl_reference: the KL penalty's reference (its base model, sampled); ``None`` without one.
    """

    name: str | None
    model_name: str
    lora_rank: int
    learning_rate: float
    num_substeps: int
    models: tuple[str, ...]
    tokenizer: Any
    renderer_name: str
    reconstruct_options: ReconstructOptions
    reward_options: RewardOptions
    log_dir: Path
    training_client: Any = None
    kl_reference: Any = None

    @property
    def prefix(self) -> str:
        """Its metrics' prefix: ``""`` alone, ``policy/<name>/`` among several."""
        return "" if self.name is None else f"policy/{self.name}/"

    def learner(self, config: TrainConfig, session_start: int = 0) -> Learner:
        """Its training side, as the one step trainer takes it (``session_start``: the weights
        version this process served first, see :class:`Learner`)."""
        return Learner(
            self.name,
            self.training_client,
            self.learning_rate,
            self.num_substeps,
            self.kl_reference,
            records_stability_info=config.loss_fn in PROVENANCE_LOSSES,
            sampling_client_kind=config.sampling_client_kind,
            session_start=session_start,
        )


def make_policies(
    config: TrainConfig, tokenizer: Any, renderer_name: str, reconstruct_options: ReconstructOptions
) -> list[Policy]:
    """The policies of ``config``: each of ``config.policies`` in order, or the run's model alone.

    ``tokenizer``, ``renderer_name`` and ``reconstruct_options`` are the run's (its ``model_name``'s);
    a policy of another base model gets its own tokenizer and recommended renderer.
    """
    base_rewards = config.reward_options()
    if not config.policies:
        return [
            Policy(
                name=None,
                model_name=config.model_name,
                lora_rank=config.lora_rank,
                learning_rate=config.learning_rate,
                num_substeps=config.num_substeps,
                models=(),
                tokenizer=tokenizer,
                renderer_name=renderer_name,
                reconstruct_options=reconstruct_options,
                reward_options=base_rewards,
                log_dir=Path(config.log_path),
            )
        ]
    out: list[Policy] = []
    for name in config.policies:
        settings = config.policy_settings(name)
        own = settings.model_name == config.model_name
        policy_tokenizer = tokenizer if own else backend.get_tokenizer(settings.model_name)
        out.append(
            Policy(
                name=name,
                model_name=settings.model_name,
                lora_rank=settings.lora_rank,
                learning_rate=settings.learning_rate,
                num_substeps=settings.num_substeps,
                models=settings.models,
                tokenizer=policy_tokenizer,
                renderer_name=settings.renderer_name
                or model_info.get_recommended_renderer_name(settings.model_name),
                reconstruct_options=replace(
                    reconstruct_options,
                    vocab_size=len(policy_tokenizer),
                    agent_match=settings.agent_match,
                    model_match=settings.model_match,
                ),
                reward_options=replace(base_rewards, dimension=settings.reward_key),
                log_dir=policy_dir(config.log_path, name),
            )
        )
    return out


def policy_view(batch: BatchResult[PolicyResults], name: str | None) -> BatchResult[RolloutTrajectory]:
    """The batch as policy ``name`` sees it: each rollout's result is that policy's trajectory."""
    groups = tuple(
        GroupResult(g.group_index, g.task, tuple(outcome_view(o, name) for o in g.outcomes))
        for g in batch.groups
    )
    return BatchResult(groups, batch.stats)


def outcome_view(
    outcome: RolloutOutcome[PolicyResults], name: str | None
) -> RolloutOutcome[RolloutTrajectory]:
    """One rollout's outcome as policy ``name`` sees it."""
    values: dict[str, Any] = {f.name: getattr(outcome, f.name) for f in fields(outcome)}
    values["result"] = outcome.result[name]
    return RolloutOutcome(**values)


def unowned_calls(results: Mapping[str | None, RolloutTrajectory]) -> int:
    """Calls of one rollout that no policy kept (each policy's reading sees every call once)."""
    if not results:
        return 0
    any_view = next(iter(results.values())).reconstruction.metrics
    total = any_view.get("calls", 0) + any_view.get("filtered_calls", 0)
    return max(0, total - sum(r.reconstruction.metrics.get("calls", 0) for r in results.values()))
