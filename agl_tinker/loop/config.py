"""Training configuration, in the cookbook's ``chz`` style, validated before anything starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import chz

from agl_tinker.core.reward_mode import RewardMode

if TYPE_CHECKING:
    from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

    from agl_tinker.core.rewards import RewardOptions


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names the field."""


DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
"""``TrainConfig.model_name`` unless set."""

LossFn = Literal["importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce"]
LOSS_CONFIG_KEYS: dict[str, frozenset[str]] = {
    "importance_sampling": frozenset(),
    "ppo": frozenset({"clip_low_threshold", "clip_high_threshold"}),
    "cispo": frozenset({"clip_low_threshold", "clip_high_threshold"}),
    "dro": frozenset({"beta"}),
    "gspo": frozenset({"clip_low_threshold", "clip_high_threshold"}),
    "stable_reinforce": frozenset({"kl_coeff"}),
}
"""The ``loss_fn_config`` keys each loss takes (Tinker's loss documentation)."""
PROVENANCE_LOSSES: frozenset[str] = frozenset({"stable_reinforce"})
"""Losses whose datums must name their recorded sampled sequences (``Datum.with_provenance``)."""
EndpointMode = Literal["lean", "proxy"]
SamplingClientKind = Literal["snapshot", "inflight"]


POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A policy name: it becomes a metrics prefix, a directory and (by default) a served model name."""


@chz.chz
class PolicyConfig:
    """One trained policy of several (``TrainConfig.policies``): its own LoRA, optimiser and calls.

    Unset fields take the ``TrainConfig`` value. A policy owns the calls that ask for one of its
    ``models`` (the endpoint samples them from this policy's weights, so no call is ever trained
    on a policy that did not sample it), narrowed by ``agent_match`` when set.
    """

    models: tuple[str, ...] = chz.field(
        default=(), doc="`model` names agents ask for to reach this policy; empty: the policy's own name."
    )
    agent_match: str | None = chz.field(
        default=None,
        doc="Regex on the agent name (`X-Agent-Name` header or enclosing agent span): of this policy's "
        "calls, only those of matching agents train; the others are sampled but not trained.",
    )
    reward_key: str | None = chz.field(
        default=None,
        doc="None: the episode reward (shared by every policy). A name: that reward dimension, e.g. "
        '`emit_reward({"team": 1.0, "checker": 0.0}, primary_key="team")` with reward_key="checker".',
    )
    model_name: str | None = chz.field(default=None, doc="Base model (None: TrainConfig.model_name).")
    renderer_name: str | None = chz.field(default=None, doc="Cookbook renderer (None: as TrainConfig).")
    lora_rank: int | None = chz.field(default=None, doc="LoRA rank (None: TrainConfig.lora_rank).")
    learning_rate: float | None = chz.field(
        default=None, doc="Adam learning rate (None: TrainConfig.learning_rate)."
    )
    num_substeps: int | None = chz.field(
        default=None, doc="Optimiser steps per training step (None: TrainConfig.num_substeps)."
    )

    def served_models(self, name: str) -> tuple[str, ...]:
        """The ``model`` names this policy (called ``name``) answers."""
        return self.models or (name,)


@chz.chz
class TrainConfig:
    """One RL run: model, batch shape, optimiser, rollout policy, evaluation, checkpoints, logging."""

    log_path: str = chz.field(
        doc="Metrics, checkpoints and the reward curve go here; an existing run here is resumed."
    )
    model_name: str = chz.field(
        default=DEFAULT_MODEL,
        doc="Base model to train (must be served by the backend; the simulator serves Qwen3 models).",
    )
    renderer_name: str | None = chz.field(
        default=None, doc="Cookbook renderer; `None` uses the one the cookbook recommends for `model_name`."
    )
    lora_rank: int = chz.field(default=16, doc="LoRA rank of the trained adapter.")
    learning_rate: float = chz.field(default=4e-5, doc="Adam learning rate of each optimiser step.")
    loss_fn: LossFn = chz.field(
        default="importance_sampling",
        doc="Policy-gradient loss: 'importance_sampling', 'ppo', 'cispo', 'dro', 'gspo' or "
        "'stable_reinforce' (Tinker's built-ins). 'stable_reinforce' serves through sampling clients "
        "that record stability info and trains datums naming each call's sampled sequence; a datum "
        "whose call was not recorded is left out and counted (datums/unrecorded).",
    )
    sampling_client_kind: SamplingClientKind = chz.field(
        default="snapshot",
        doc="How new weights reach the served sampling client (the SDK's SamplingClientKind): 'snapshot' "
        "saves fixed weights each step; 'inflight' saves onto the training model's one shared target, "
        "which clients already serving (and calls in flight) adopt; each call records the save its client "
        "was created at, the oldest weights it may have run on.",
    )
    loss_fn_config: dict[str, Any] | None = chz.field(
        default=None,
        doc="Extra loss settings: clip_low_threshold/clip_high_threshold (ppo, cispo, gspo), beta (dro), "
        "kl_coeff (stable_reinforce).",
    )
    num_substeps: int = chz.field(
        default=1, doc="Optimiser steps per training step (the batch is split into this many minibatches)."
    )
    kl_penalty_coef: float = chz.field(
        default=0.0, doc="> 0 adds a KL penalty against the base model to the advantages (cookbook's own)."
    )
    kl_discount_factor: float = chz.field(default=0.0, doc="Discount of the KL penalty over later tokens.")

    batch_size: int = chz.field(default=8, doc="Tasks per training step.")
    group_size: int = chz.field(default=4, doc="Rollouts per task; advantages are centred within each group.")
    n_epochs: int = chz.field(default=1, doc="Passes over the training tasks when max_steps is not set.")
    max_steps: int | None = chz.field(
        default=None,
        doc="Training steps; more than n_epochs cover cycles the data again (None: n_epochs passes).",
    )
    seed: int = chz.field(
        default=0, doc="Seed of the data order, the validation split and the LoRA initialisation."
    )
    val_fraction: float = chz.field(
        default=0.0, doc="When no validation set is given, hold out this fraction of the training tasks."
    )

    temperature: float = chz.field(default=1.0, doc="Sampling temperature of training rollouts.")
    max_tokens: int = chz.field(
        default=256, doc="Default max_tokens of a completion when the agent does not pass one."
    )
    eval_every: int = chz.field(
        default=0,
        doc="Evaluate on the validation set every N steps (and at the end); 0 turns evaluation off.",
    )
    eval_temperature: float = chz.field(default=0.0, doc="Sampling temperature of validation rollouts.")
    save_every: int = chz.field(
        default=0, doc="Full checkpoint (weights + optimiser) every N steps; 0 saves only at the end."
    )

    reward_mode: RewardMode = chz.field(
        default=RewardMode.FINAL,
        doc="'final': the last reward is the return; 'sum': their sum; 'per_step': each to the call before it.",
    )
    excluded_score: float | None = chz.field(
        default=None,
        doc="`None` excludes failed and reward-less rollouts; a number trains them with that return.",
    )
    min_valid_per_group: int = chz.field(
        default=2, doc="A group with fewer usable rollouts than this is dropped (an advantage needs two)."
    )
    remove_constant_reward_groups: bool = chz.field(
        default=False, doc="Drop groups whose rollouts all scored the same (they carry no advantage signal)."
    )
    max_abs_reward: float = chz.field(
        default=1e6,
        doc="A reward of larger magnitude (or NaN, infinite, not a number) excludes its rollout: `bad_reward`.",
    )
    on_gap: Literal["exclude", "train"] = chz.field(
        default="exclude",
        doc="A rollout that lost a call's span: 'exclude' it (`gap`) or 'train' the calls recorded.",
    )

    rollout_timeout_s: float | None = chz.field(
        default=300.0, doc="A rollout running longer is timed out and excluded (None: no limit)."
    )
    max_attempts: int = chz.field(
        default=1,
        doc="Attempts per rollout; > 1 retries failed or timed-out attempts through `RolloutConfig`.",
    )
    max_in_flight: int | None = chz.field(
        default=None, doc="Most rollouts enqueued and unfinished at once (None: the whole batch)."
    )
    batch_timeout_s: float | None = chz.field(
        default=None,
        doc="After this, a batch's unfinished rollouts are cancelled and excluded (None: wait for all).",
    )

    endpoint_mode: EndpointMode = chz.field(
        default="lean", doc="'lean' (aiohttp server, default) or 'proxy' (Agent-lightning's LLMProxy)."
    )
    endpoint_host: str = chz.field(
        default="127.0.0.1",
        doc="Bind address of the policy endpoint; set 0.0.0.0 (and `endpoint_public_host`) for remote runners.",
    )
    endpoint_port: int = chz.field(default=0, doc="Port of the policy endpoint (0: any free port).")
    endpoint_public_host: str | None = chz.field(
        default=None, doc="Host name runners on other machines use to reach the endpoint."
    )
    token_in_token_out: bool = chz.field(
        default=True, doc="Reuse the sampled tokens of earlier assistant messages (no re-rendering drift)."
    )
    max_context_tokens: int = chz.field(
        default=32768, doc="A prompt longer than this is refused before sampling."
    )

    wandb_project: str | None = chz.field(
        default=None, doc="Weights & Biases project to log to (None: local files only)."
    )
    wandb_name: str | None = chz.field(default=None, doc="Weights & Biases run name.")

    agent_match: str | None = chz.field(
        default=None,
        doc="Which calls train: a regex on the agent name a call was made under (the `X-Agent-Name` request "
        "header, or the enclosing agent span); calls of other or unnamed agents do not train.",
    )
    model_match: str | None = chz.field(
        default=None, doc="Which calls train: a regex on the `model` name a call asked for."
    )
    model_aliases: tuple[str, ...] = chz.field(
        default=(),
        doc="More `model` names the endpoint answers besides `model_name` (e.g. one per agent role).",
    )

    policies: dict[str, PolicyConfig] = chz.field(
        default_factory=dict,
        doc="Several agents, several LoRAs: policy name -> PolicyConfig. Each policy has its own training "
        "client, sampling client (served under its `models` names), groups, optimiser steps, checkpoints "
        "(log_path/policies/<name>/) and metrics (`policy/<name>/...`). Empty: one policy, `model_name`.",
    )

    transcripts_per_step: int = chz.field(
        default=8,
        doc="Rollouts per step written with their calls (messages, token ids, logprobs, drift) to "
        "log_path/transcripts/step_NNNNNN.jsonl (validation: eval_NNNNNN.jsonl), besides every excluded or "
        "drifting one (up to as many again); every rollout gets a summary row. At most 1 MB per step. 0: none.",
    )
    max_empty_steps: int = chz.field(
        default=3,
        doc="Stop the run (an error, exit code 1) after this many steps in a row with no rollout to train on "
        "(all failed, timed out or without reward); each such step is logged as an error. 0 never stops.",
    )
    fresh_start: bool = chz.field(
        default=False,
        doc="Start from step 0 with new weights even if `log_path` holds an earlier run; its metrics.jsonl and "
        "checkpoints.jsonl are renamed aside (`.old-<time>`). Without it, a `log_path` with metrics but no "
        "loadable checkpoint refuses to start.",
    )
    warn_flat_reward_steps: int = chz.field(
        default=3,
        doc="Warn once when this many steps in a row had nothing to learn from (every group scored the same, "
        "or no datum trained). 0 never warns.",
    )
    identity_override: bool = chz.field(
        default=False,
        doc="Resume a `log_path` whose recorded run (run.json) had another model, renderer, LoRA rank, loss, "
        "policies or dataset. Without it such a resume is refused; with it the change is recorded in run.json "
        "and the first step's metrics (`run/identity_override`).",
    )
    tinker_max_attempts: int = chz.field(
        default=6,
        doc="Tries per Tinker call (sampling, training, saving, client creation) on transient errors "
        "(5xx, 408, 409, 429, connection errors: the SDK's own rules); 1 disables retries.",
    )
    tinker_retry_base_s: float = chz.field(
        default=0.5, doc="First retry delay; doubled per retry up to `tinker_retry_max_s`, with +-25% jitter."
    )
    tinker_retry_max_s: float = chz.field(
        default=10.0, doc="Longest delay between two tries of a Tinker call."
    )

    async_config: AsyncConfig | None = chz.field(
        default=None,
        doc="Asynchronous off-policy training (the cookbook's): train as soon as `groups_per_batch` groups are "
        "complete while the next ones run; groups more than `max_steps_off_policy` weights versions behind are "
        "requeued or dropped (`agl_tinker.loop.schedules`). None: synchronous.",
    )
    stream_minibatch_config: StreamMinibatchConfig | None = chz.field(
        default=None,
        doc="`forward_backward` on each minibatch of groups as soon as it is complete (the cookbook's).",
    )

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that would fail later, far from their cause."""
        positive = {
            "lora_rank": self.lora_rank,
            "batch_size": self.batch_size,
            "group_size": self.group_size,
            "n_epochs": self.n_epochs,
            "num_substeps": self.num_substeps,
            "max_tokens": self.max_tokens,
            "max_attempts": self.max_attempts,
            "tinker_max_attempts": self.tinker_max_attempts,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        for name, value in {
            "eval_every": self.eval_every,
            "save_every": self.save_every,
            "transcripts_per_step": self.transcripts_per_step,
        }.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.temperature < 0 or self.eval_temperature < 0:
            raise ConfigError("temperature and eval_temperature must be >= 0")
        if self.kl_penalty_coef < 0:
            raise ConfigError(f"kl_penalty_coef must be >= 0, got {self.kl_penalty_coef}")
        if self.min_valid_per_group > self.group_size:
            raise ConfigError(
                f"min_valid_per_group ({self.min_valid_per_group}) exceeds group_size ({self.group_size}): "
                "every group would be dropped"
            )
        if self.rollout_timeout_s is not None and self.rollout_timeout_s <= 0:
            raise ConfigError(f"rollout_timeout_s must be > 0 or None, got {self.rollout_timeout_s}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1 or None, got {self.max_in_flight}")
        if not 0 <= self.endpoint_port <= 65535:
            raise ConfigError(f"endpoint_port must be in 0..65535, got {self.endpoint_port}")
        if self.min_valid_per_group < 0:
            raise ConfigError(f"min_valid_per_group must be >= 0, got {self.min_valid_per_group}")
        if self.batch_timeout_s is not None and not self.batch_timeout_s > 0:
            raise ConfigError(f"batch_timeout_s must be > 0 or None, got {self.batch_timeout_s}")
        if self.max_empty_steps < 0:
            raise ConfigError(f"max_empty_steps must be >= 0, got {self.max_empty_steps}")
        if self.tinker_retry_base_s < 0 or self.tinker_retry_max_s < 0:
            raise ConfigError("tinker_retry_base_s and tinker_retry_max_s must be >= 0")
        if self.max_context_tokens < 1:
            raise ConfigError(f"max_context_tokens must be >= 1, got {self.max_context_tokens}")
        if not self.max_abs_reward > 0:
            raise ConfigError(f"max_abs_reward must be > 0, got {self.max_abs_reward}")
        for name, pattern in {"agent_match": self.agent_match, "model_match": self.model_match}.items():
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"{name} is not a valid regular expression: {exc}") from None
        if self.model_aliases and self.endpoint_mode != "lean":
            raise ConfigError("model_aliases needs endpoint_mode='lean' (LLMProxy serves one model name)")
        self._validate_overlap()
        self._validate_policies()
        # chz does not check Literal/enum values: a typo would only fail (or silently differ) later.
        choices: dict[str, tuple[str, tuple[str, ...]]] = {
            "loss_fn": (self.loss_fn, get_args(LossFn)),
            "endpoint_mode": (self.endpoint_mode, get_args(EndpointMode)),
            "sampling_client_kind": (self.sampling_client_kind, get_args(SamplingClientKind)),
            "on_gap": (self.on_gap, ("exclude", "train")),
        }
        for name, (choice, allowed) in choices.items():
            if choice not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {choice!r}")
        self._validate_loss()
        if self.reward_mode not in {m.value for m in RewardMode}:
            raise ConfigError(
                f"reward_mode must be one of {[m.value for m in RewardMode]}, got {self.reward_mode!r}"
            )

    def _validate_loss(self) -> None:
        unknown = set(self.loss_fn_config or {}) - LOSS_CONFIG_KEYS[self.loss_fn]
        if unknown:
            raise ConfigError(
                f"loss_fn_config keys {sorted(unknown)} are not {self.loss_fn!r}'s; it takes "
                f"{sorted(LOSS_CONFIG_KEYS[self.loss_fn]) or 'none'}"
            )

    def _validate_overlap(self) -> None:
        """``async_config``/``stream_minibatch_config`` must fit the batch shape (steps = batches)."""
        if self.async_config is not None:
            if self.async_config.groups_per_batch != self.batch_size:
                raise ConfigError(
                    f"async_config.groups_per_batch ({self.async_config.groups_per_batch}) must equal "
                    f"batch_size ({self.batch_size}): a step trains one batch's worth of groups"
                )
            if self.async_config.max_steps_off_policy < 0:
                raise ConfigError("async_config.max_steps_off_policy must be >= 0")
        stream = self.stream_minibatch_config
        if stream is not None:
            if stream.groups_per_batch != self.batch_size:
                raise ConfigError(
                    f"stream_minibatch_config.groups_per_batch ({stream.groups_per_batch}) must equal "
                    f"batch_size ({self.batch_size})"
                )
            per_substep, rest = divmod(self.batch_size, self.num_substeps)
            if rest or stream.num_minibatches < 1 or per_substep % stream.num_minibatches:
                raise ConfigError(
                    f"stream_minibatch_config: batch_size ({self.batch_size}) must split into num_substeps "
                    f"({self.num_substeps}) x num_minibatches ({stream.num_minibatches}) equal minibatches"
                )

    def _validate_policies(self) -> None:
        """Each call has at most one owner; settings that are single-policy only are refused."""
        if not self.policies:
            return
        single_only = {
            "agent_match": self.agent_match is not None,
            "model_match": self.model_match is not None,
            "model_aliases": bool(self.model_aliases),
        }
        for name, used in single_only.items():
            if used:
                raise ConfigError(
                    f"{name} cannot be combined with policies: set per-policy `models`/`agent_match` instead"
                )
        if self.endpoint_mode != "lean":
            raise ConfigError("policies need endpoint_mode='lean' (LLMProxy serves one model name)")
        owner: dict[str, str] = {}
        for name, policy in self.policies.items():
            if not isinstance(policy, PolicyConfig):
                raise ConfigError(f"policies[{name!r}] must be a PolicyConfig, got {type(policy).__name__}")
            if not POLICY_NAME.match(name):
                raise ConfigError(
                    f"policy name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (not first)"
                )
            for field_name in ("lora_rank", "num_substeps"):
                value = getattr(policy, field_name)
                if value is not None and value < 1:
                    raise ConfigError(f"policies[{name!r}].{field_name} must be >= 1, got {value}")
            if policy.learning_rate is not None and not policy.learning_rate > 0:
                raise ConfigError(f"policies[{name!r}].learning_rate must be > 0, got {policy.learning_rate}")
            if policy.agent_match is not None:
                try:
                    re.compile(policy.agent_match)
                except re.error as exc:
                    raise ConfigError(f"policies[{name!r}].agent_match is not a valid regex: {exc}") from None
            if policy.reward_key is not None and not policy.reward_key:
                raise ConfigError(f"policies[{name!r}].reward_key must be a dimension name or None")
            for model in policy.served_models(name):
                if not model:
                    raise ConfigError(f"policies[{name!r}].models holds an empty name")
                if model in owner:
                    raise ConfigError(
                        f"model name {model!r} is served by both policies {owner[model]!r} and {name!r}: "
                        "each requested model name must select exactly one policy"
                    )
                owner[model] = name

    def policy_settings(self, name: str) -> ResolvedPolicy:
        """Policy ``name``'s settings with the ``TrainConfig`` defaults filled in."""
        policy = self.policies[name]
        return ResolvedPolicy(
            name=name,
            models=policy.served_models(name),
            agent_match=policy.agent_match,
            reward_key=policy.reward_key,
            model_name=policy.model_name or self.model_name,
            renderer_name=policy.renderer_name
            or (self.renderer_name if policy.model_name in (None, self.model_name) else None),
            lora_rank=policy.lora_rank if policy.lora_rank is not None else self.lora_rank,
            learning_rate=policy.learning_rate if policy.learning_rate is not None else self.learning_rate,
            num_substeps=policy.num_substeps if policy.num_substeps is not None else self.num_substeps,
        )

    def reward_options(self) -> RewardOptions:
        """The reward settings as the pure core takes them (``reward_mode`` as a ``RewardMode``).

        The core compares modes by identity, so a plain string such as ``"sum"`` must become the
        enum member here, or it would silently behave as neither mode.
        """
        from agl_tinker.core.rewards import RewardOptions

        return RewardOptions(
            mode=RewardMode(self.reward_mode),
            excluded_score=self.excluded_score,
            min_valid_per_group=self.min_valid_per_group,
        )


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


def bind_cookbook_types() -> None:
    """Make ``AsyncConfig``/``StreamMinibatchConfig`` names of this module.

    chz resolves ``TrainConfig``'s annotations in this module when it builds a ``Blueprint``
    (command-line ``key=value`` settings). They are the cookbook's classes, whose module takes
    seconds to import, so they are imported here on demand rather than with the config: a
    misconfiguration that needs no Blueprint is reported before that cost.
    """
    from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

    globals().update(AsyncConfig=AsyncConfig, StreamMinibatchConfig=StreamMinibatchConfig)
