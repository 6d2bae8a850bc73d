"""Training configuration, in the cookbook's ``chz`` style, validated before anything starts."""

from __future__ import annotations

from typing import Any, Literal, get_args

import chz
from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

from agl_tinker.rewards import RewardMode, RewardOptions


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names the field."""


LossFn = Literal["importance_sampling", "ppo"]
EndpointMode = Literal["lean", "proxy"]


@chz.chz
class TrainConfig:
    """One RL run: model, batch shape, optimiser, rollout policy, evaluation, checkpoints, logging."""

    log_path: str
    """Metrics, checkpoints and the reward curve go here; an existing run here is resumed."""
    model_name: str = "Qwen/Qwen3-4B-Instruct-2507"
    renderer_name: str | None = None
    """Cookbook renderer; ``None`` uses the one the cookbook recommends for ``model_name``."""
    lora_rank: int = 16
    learning_rate: float = 4e-5
    loss_fn: LossFn = "importance_sampling"
    loss_fn_config: dict[str, Any] | None = None
    num_substeps: int = 1
    kl_penalty_coef: float = 0.0
    """> 0 adds a KL penalty against the base model to the advantages (cookbook's own)."""
    kl_discount_factor: float = 0.0

    batch_size: int = 8
    """Tasks per training step."""
    group_size: int = 4
    """Rollouts per task; advantages are centred within each group."""
    n_epochs: int = 1
    max_steps: int | None = None
    """Stop after this many steps even if epochs remain."""
    seed: int = 0
    val_fraction: float = 0.0
    """When no validation set is given, hold out this fraction of the training tasks."""

    temperature: float = 1.0
    max_tokens: int = 256
    eval_every: int = 0
    """Evaluate on the validation set every N steps (and at the end); 0 turns evaluation off."""
    eval_temperature: float = 0.0
    save_every: int = 0
    """Full checkpoint (weights + optimiser) every N steps; 0 saves only at the end."""

    reward_mode: RewardMode = RewardMode.FINAL
    excluded_score: float | None = None
    """``None`` excludes failed and reward-less rollouts; a number trains them with that return."""
    min_valid_per_group: int = 2
    remove_constant_reward_groups: bool = False
    """Drop groups whose rollouts all scored the same (they carry no advantage signal)."""
    max_abs_reward: float = 1e6
    """A reward of larger magnitude (or NaN, infinite, not a number) excludes its rollout: ``bad_reward``."""
    on_gap: Literal["exclude", "train"] = "exclude"
    """A rollout that lost a call's span: ``exclude`` it (``gap``) or ``train`` the calls recorded."""

    rollout_timeout_s: float | None = 300.0
    max_attempts: int = 1
    """Attempts per rollout; > 1 retries failed or timed-out attempts through ``RolloutConfig``."""
    max_in_flight: int | None = None
    batch_timeout_s: float | None = None

    endpoint_mode: EndpointMode = "lean"
    endpoint_host: str = "127.0.0.1"
    """Bind address of the policy endpoint; set 0.0.0.0 (and ``endpoint_public_host``) for remote runners."""
    endpoint_port: int = 0
    endpoint_public_host: str | None = None
    token_in_token_out: bool = True
    max_context_tokens: int = 32768

    wandb_project: str | None = None
    wandb_name: str | None = None

    max_empty_steps: int = 3
    """Stop the run (an error, exit code 1) after this many steps in a row with no rollout to
    train on (all failed, timed out or without reward); each such step is logged as an error.
    0 never stops."""
    fresh_start: bool = False
    """Start from step 0 with new weights even if ``log_path`` holds an earlier run; its
    ``metrics.jsonl`` and ``checkpoints.jsonl`` are renamed aside (``.old-<time>``). Without it,
    a ``log_path`` with metrics but no loadable checkpoint refuses to start."""
    tinker_max_attempts: int = 6
    """Tries per Tinker call (sampling, training, saving, client creation) on transient errors
    (5xx, 408, 409, 429, connection errors: the SDK's own rules); 1 disables retries."""
    tinker_retry_base_s: float = 0.5
    """First retry delay; doubled per retry up to ``tinker_retry_max_s``, with +-25% jitter."""
    tinker_retry_max_s: float = 10.0

    async_config: AsyncConfig | None = None
    """Asynchronous off-policy training (the cookbook's): train as soon as ``groups_per_batch``
    groups are complete while the next ones run; groups more than ``max_steps_off_policy`` weights
    versions behind are requeued or dropped (``agl_tinker.async_loop``). ``None``: synchronous."""
    stream_minibatch_config: StreamMinibatchConfig | None = None
    """``forward_backward`` on each minibatch of groups as soon as it is complete (the cookbook's)."""

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
        for name, value in {"eval_every": self.eval_every, "save_every": self.save_every}.items():
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
        self._validate_overlap()
        # chz does not check Literal/enum values: a typo would only fail (or silently differ) later.
        choices: dict[str, tuple[str, tuple[str, ...]]] = {
            "loss_fn": (self.loss_fn, get_args(LossFn)),
            "endpoint_mode": (self.endpoint_mode, get_args(EndpointMode)),
            "on_gap": (self.on_gap, ("exclude", "train")),
        }
        for name, (choice, allowed) in choices.items():
            if choice not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {choice!r}")
        if self.reward_mode not in {m.value for m in RewardMode}:
            raise ConfigError(
                f"reward_mode must be one of {[m.value for m in RewardMode]}, got {self.reward_mode!r}"
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

    def reward_options(self) -> RewardOptions:
        """The reward settings as the pure core takes them (``reward_mode`` as a ``RewardMode``).

        The core compares modes by identity, so a plain string such as ``"sum"`` must become the
        enum member here, or it would silently behave as neither mode.
        """
        return RewardOptions(
            mode=RewardMode(self.reward_mode),
            excluded_score=self.excluded_score,
            min_valid_per_group=self.min_valid_per_group,
        )
