"""One policy of a several-policy run: its settings (:class:`PolicyConfig`) and them resolved."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import chz

from agl_tinker.loop.config_rules import (
    ConfigError,
    KnownKeywords,
    Rule,
    at_least,
    greater_than,
    non_empty,
    regex,
)

__all__ = ["PER_POLICY", "PerPolicy", "PolicyConfig", "ResolvedPolicy", "policy_configs", "run_field"]


@dataclass(frozen=True)
class PerPolicy:
    """A ``TrainConfig`` setting each policy of several may set for itself (unset: the run's)."""

    doc: str
    rule: Rule | None = None


PER_POLICY: dict[str, PerPolicy] = {
    "model_name": PerPolicy(
        "Base model to train (must be served by the backend; the simulator serves Qwen3 models)."
    ),
    "lora_rank": PerPolicy("LoRA rank of the trained adapter.", at_least(1)),
    "learning_rate": PerPolicy("Adam learning rate of each optimiser step.", greater_than(0)),
    "num_substeps": PerPolicy(
        "Optimiser steps per training step (the batch is split into this many minibatches).", at_least(1)
    ),
}
"""The one place for these settings' rules and meaning: ``TrainConfig`` declares each with
:func:`run_field`, ``PolicyConfig`` with :func:`_policy_field` (the same rule, ``None`` allowed)."""


def run_field(name: str, default: Any) -> Any:
    """``TrainConfig``'s chz field for the per-policy setting ``name``."""
    setting = PER_POLICY[name]
    return chz.field(default=default, validator=setting.rule, doc=setting.doc)


def _policy_field(name: str) -> Any:
    """``PolicyConfig``'s chz field for ``name``: unset (``None``) takes the ``TrainConfig`` value."""
    setting = PER_POLICY[name]
    rule = setting.rule.or_none() if setting.rule else None
    return chz.field(default=None, validator=rule, doc=f"{setting.doc} None: TrainConfig.{name}.")


@chz.chz
class PolicyConfig(KnownKeywords):
    """One trained policy of several (``TrainConfig.policies``): its own LoRA, optimiser and calls.

    Unset fields take the ``TrainConfig`` value. A policy owns the calls that ask for one of its
    ``models`` (the endpoint samples them from this policy's weights, so no call is ever trained
    on a policy that did not sample it), narrowed by ``agent_match`` when set.
    """

    field_label_prefix: ClassVar[str] = "PolicyConfig."

    models: tuple[str, ...] = chz.field(
        default=(), doc="`model` names agents ask for to reach this policy; empty: the policy's own name."
    )
    agent_match: str | None = chz.field(
        validator=regex,
        default=None,
        doc="Regex on the agent name (`X-Agent-Name` header or enclosing agent span): of this policy's "
        "calls, only those of matching agents train; the others are sampled but not trained.",
    )
    reward_key: str | None = chz.field(
        validator=non_empty,
        default=None,
        doc="None: the episode reward (shared by every policy). A name: that reward dimension, e.g. "
        '`emit_reward({"team": 1.0, "checker": 0.0}, primary_key="team")` with reward_key="checker".',
    )
    model_name: str | None = _policy_field("model_name")
    renderer_name: str | None = chz.field(
        default=None,
        doc="Cookbook renderer (None: TrainConfig.renderer_name for TrainConfig.model_name, else the one "
        "the cookbook recommends).",
    )
    lora_rank: int | None = _policy_field("lora_rank")
    learning_rate: float | None = _policy_field("learning_rate")
    num_substeps: int | None = _policy_field("num_substeps")

    def served_models(self, name: str) -> tuple[str, ...]:
        """The ``model`` names this policy (called ``name``) answers."""
        return self.models or (name,)


def policy_configs(config: Any, attribute: str) -> None:
    """``policies`` maps names to :class:`PolicyConfig` objects (the names are checked across fields)."""
    for name, policy in getattr(config, attribute).items():
        if not isinstance(policy, PolicyConfig):
            raise ConfigError(f"policies[{name!r}] must be a PolicyConfig, got {type(policy).__name__}")


@dataclass(frozen=True)
class ResolvedPolicy:
    """One policy's settings after defaults (:meth:`TrainConfig.policy_settings`)."""

    name: str
    models: tuple[str, ...]
    agent_match: str | None
    reward_key: str | None
    model_name: str
    renderer_name: str | None
    lora_rank: int
    learning_rate: float
    num_substeps: int

    @property
    def model_match(self) -> str:
        """The regex the core selects this policy's calls with: exactly one of its model names."""
        return "^(?:" + "|".join(re.escape(m) for m in self.models) + ")$"

    @classmethod
    def of(cls, policy: PolicyConfig, name: str, run: Any) -> ResolvedPolicy:
        """``policy`` (called ``name``) with the unset fields taken from ``run`` (a ``TrainConfig``)."""
        own = {key: getattr(policy, key) for key in PER_POLICY}
        return cls(
            name=name,
            models=policy.served_models(name),
            agent_match=policy.agent_match,
            reward_key=policy.reward_key,
            renderer_name=policy.renderer_name
            or (run.renderer_name if policy.model_name in (None, run.model_name) else None),
            **{key: getattr(run, key) if value is None else value for key, value in own.items()},
        )
