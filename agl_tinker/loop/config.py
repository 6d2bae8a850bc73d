"""Training configuration, in the cookbook's ``chz`` style, checked when it is built.

Fields only: their rules are :mod:`agl_tinker.loop.config_rules` (per-field validators named in each
``chz.field``, cross-field rules in one function; the settings a policy of several may set for
itself are declared once, in :data:`agl_tinker.loop.policy_config.PER_POLICY`), run by chz from ``__init__``, so a config is
checked the same way whether it comes from the command line, a script or ``TinkerAlgorithm``.
A keyword that is no field is refused with the closest field's name, as on the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

import chz

from agl_tinker.core.reward_mode import RewardMode
from agl_tinker.loop.config_rules import (
    LOSS_CONFIG_KEYS,
    ConfigError,
    KnownKeywords,
    at_least,
    check_train_config,
    greater_than,
    in_interval,
    one_of,
    regex,
)
from agl_tinker.loop.policy_config import PolicyConfig, ResolvedPolicy, policy_configs, run_field

if TYPE_CHECKING:
    from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

    from agl_tinker.core.rewards import RewardOptions

__all__ = [
    "DEFAULT_MODEL",
    "LOSS_CONFIG_KEYS",
    "PROVENANCE_LOSSES",
    "ConfigError",
    "PolicyConfig",
    "ResolvedPolicy",
    "TrainConfig",
    "bind_cookbook_types",
]

DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
"""``TrainConfig.model_name`` unless set."""

LossFn = Literal["importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce"]
PROVENANCE_LOSSES: frozenset[str] = frozenset({"stable_reinforce"})
"""Losses whose datums must name their recorded sampled sequences (``Datum.with_provenance``)."""
EndpointMode = Literal["lean", "proxy"]
SamplingClientKind = Literal["snapshot", "inflight"]
OnGap = Literal["exclude", "train"]


@chz.chz
class TrainConfig(KnownKeywords):
    """One RL run: model, batch shape, optimiser, rollouts, rewards, endpoint, evaluation, checkpoints.

    Building one checks it (:mod:`agl_tinker.loop.config_rules`); a value that would fail later, far
    from its cause, raises :class:`ConfigError` naming the field instead.
    """

    # -- What is trained: base model, adapter, optimiser, loss --------------------------------------
    log_path: str = chz.field(
        doc="Metrics, checkpoints and the reward curve go here; an existing run here is resumed."
    )
    model_name: str = run_field("model_name", DEFAULT_MODEL)
    renderer_name: str | None = chz.field(
        default=None, doc="Cookbook renderer; `None` uses the one the cookbook recommends for `model_name`."
    )
    lora_rank: int = run_field("lora_rank", 16)
    learning_rate: float = run_field("learning_rate", 4e-5)
    num_substeps: int = run_field("num_substeps", 1)
    loss_fn: LossFn = chz.field(
        validator=one_of(get_args(LossFn)),
        default="importance_sampling",
        doc="Policy-gradient loss: 'importance_sampling', 'ppo', 'cispo', 'dro', 'gspo' or "
        "'stable_reinforce' (Tinker's built-ins). 'stable_reinforce' serves through sampling clients "
        "that record stability info and trains datums naming each call's sampled sequence; a datum "
        "whose call was not recorded is left out and counted (datums/unrecorded).",
    )
    loss_fn_config: dict[str, Any] | None = chz.field(
        default=None,
        doc="Extra loss settings: clip_low_threshold/clip_high_threshold (ppo, cispo, gspo), beta (dro), "
        "kl_coeff (stable_reinforce).",
    )
    kl_penalty_coef: float = chz.field(
        validator=at_least(0),
        default=0.0,
        doc="> 0 adds a KL penalty against the base model to the advantages (cookbook's own).",
    )
    kl_discount_factor: float = chz.field(default=0.0, doc="Discount of the KL penalty over later tokens.")

    # -- Data and batch shape -----------------------------------------------------------------------
    batch_size: int = chz.field(validator=at_least(1), default=8, doc="Tasks per training step.")
    group_size: int = chz.field(
        validator=at_least(1), default=4, doc="Rollouts per task; advantages are centred within each group."
    )
    n_epochs: int = chz.field(
        validator=at_least(1), default=1, doc="Passes over the training tasks when max_steps is not set."
    )
    max_steps: int | None = chz.field(
        validator=at_least(1, optional=True),
        default=None,
        doc="Training steps; more than n_epochs cover cycles the data again (None: n_epochs passes).",
    )
    seed: int = chz.field(
        default=0, doc="Seed of the data order, the validation split and the LoRA initialisation."
    )
    val_fraction: float = chz.field(
        validator=in_interval(0, 1, closed=False),
        default=0.0,
        doc="When no validation set is given, hold out this fraction of the training tasks.",
    )

    # -- Rollouts: sampling, time limits, retries, concurrency --------------------------------------
    temperature: float = chz.field(
        validator=at_least(0), default=1.0, doc="Sampling temperature of training rollouts."
    )
    max_tokens: int = chz.field(
        validator=at_least(1),
        default=256,
        doc="Default max_tokens of a completion when the agent does not pass one.",
    )
    rollout_timeout_s: float | None = chz.field(
        validator=greater_than(0, optional=True),
        default=300.0,
        doc="A rollout running longer is timed out and excluded (None: no limit).",
    )
    max_attempts: int = chz.field(
        validator=at_least(1),
        default=1,
        doc="Attempts per rollout; > 1 retries failed or timed-out attempts through `RolloutConfig`.",
    )
    max_in_flight: int | None = chz.field(
        validator=at_least(1, optional=True),
        default=None,
        doc="Most rollouts enqueued and unfinished at once (None: the whole batch).",
    )
    batch_timeout_s: float | None = chz.field(
        validator=greater_than(0, optional=True),
        default=None,
        doc="After this, a batch's unfinished rollouts are cancelled and excluded (None: wait for all).",
    )

    # -- Rewards: returns, exclusions, groups -------------------------------------------------------
    reward_mode: RewardMode = chz.field(
        validator=one_of(mode.value for mode in RewardMode),
        default=RewardMode.FINAL,
        doc="'final': the last reward is the return; 'sum': their sum; 'per_step': each to the call before it.",
    )
    excluded_score: float | None = chz.field(
        default=None,
        doc="`None` excludes failed and reward-less rollouts; a number trains them with that return.",
    )
    min_valid_per_group: int = chz.field(
        validator=at_least(0),
        default=2,
        doc="A group with fewer usable rollouts than this is dropped (an advantage needs two).",
    )
    remove_constant_reward_groups: bool = chz.field(
        default=False, doc="Drop groups whose rollouts all scored the same (they carry no advantage signal)."
    )
    max_abs_reward: float = chz.field(
        validator=greater_than(0),
        default=1e6,
        doc="A reward of larger magnitude (or NaN, infinite, not a number) excludes its rollout: `bad_reward`.",
    )
    on_gap: OnGap = chz.field(
        validator=one_of(get_args(OnGap)),
        default="exclude",
        doc="A rollout that lost a call's span: 'exclude' it (`gap`) or 'train' the calls recorded.",
    )

    # -- Overlapped training (the cookbook's asynchronous and streaming modes; None: synchronous) ---
    async_config: AsyncConfig | None = chz.field(
        default=None,
        doc="Asynchronous off-policy training (the cookbook's): train as soon as `groups_per_batch` groups are "
        "complete while the next ones run; groups more than `max_steps_off_policy` weights versions behind are "
        "requeued or dropped (`agl_tinker.loop.schedules`). None: synchronous.",
    )
    sampling_steps_ahead: int | None = chz.field(
        default=None,
        doc="Pacing instead of discarding (needs `async_config`): a group is dispatched only while the groups "
        "dispatched are fewer than (steps trained + 1 + this) x `groups_per_batch`, and a step waits for every "
        "group dispatched this many versions ago, so no group is ever more than this many versions behind and "
        "none is requeued or dropped (`agl_tinker.loop.pacing`). Must be <= `max_steps_off_policy`. None: "
        "the requeue/drop rule of `async_config.max_steps_off_policy`.",
    )
    stream_minibatch_config: StreamMinibatchConfig | None = chz.field(
        default=None,
        doc="`forward_backward` on each minibatch of groups as soon as it is complete (the cookbook's).",
    )

    # -- The policy endpoint the agents call --------------------------------------------------------
    endpoint_mode: EndpointMode = chz.field(
        validator=one_of(get_args(EndpointMode)),
        default="lean",
        doc="'lean' (aiohttp server, default) or 'proxy' (Agent-lightning's LLMProxy).",
    )
    endpoint_host: str = chz.field(
        default="127.0.0.1",
        doc="Bind address of the policy endpoint; set 0.0.0.0 (and `endpoint_public_host`) for remote runners.",
    )
    endpoint_port: int = chz.field(
        validator=in_interval(0, 65535, closed=True),
        default=0,
        doc="Port of the policy endpoint (0: any free port).",
    )
    endpoint_public_host: str | None = chz.field(
        default=None, doc="Host name runners on other machines use to reach the endpoint."
    )
    token_in_token_out: bool = chz.field(
        default=True, doc="Reuse the sampled tokens of earlier assistant messages (no re-rendering drift)."
    )
    max_context_tokens: int = chz.field(
        validator=at_least(1), default=32768, doc="A prompt longer than this is refused before sampling."
    )
    sampling_client_kind: SamplingClientKind = chz.field(
        validator=one_of(get_args(SamplingClientKind)),
        default="snapshot",
        doc="How new weights reach the served sampling client (the SDK's SamplingClientKind): 'snapshot' "
        "saves fixed weights each step; 'inflight' saves onto the training model's one shared target, "
        "which clients already serving (and calls in flight) adopt; each call records the save its client "
        "was created at, the oldest weights it may have run on.",
    )

    # -- Which calls train; several policies --------------------------------------------------------
    agent_match: str | None = chz.field(
        validator=regex,
        default=None,
        doc="Which calls train: a regex on the agent name a call was made under (the `X-Agent-Name` request "
        "header, or the enclosing agent span); calls of other or unnamed agents do not train.",
    )
    model_match: str | None = chz.field(
        validator=regex, default=None, doc="Which calls train: a regex on the `model` name a call asked for."
    )
    model_aliases: tuple[str, ...] = chz.field(
        default=(),
        doc="More `model` names the endpoint answers besides `model_name` (e.g. one per agent role).",
    )
    policies: dict[str, PolicyConfig] = chz.field(
        validator=policy_configs,
        default_factory=dict,
        doc="Several agents, several LoRAs: policy name -> PolicyConfig. Each policy has its own training "
        "client, sampling client (served under its `models` names), groups, optimiser steps, checkpoints "
        "(log_path/policies/<name>/) and metrics (`policy/<name>/...`). Empty: one policy, `model_name`.",
    )

    # -- Evaluation, checkpoints, transcripts, logging ----------------------------------------------
    eval_every: int = chz.field(
        validator=at_least(0),
        default=0,
        doc="Evaluate on the validation set every N steps (and at the end); 0 turns evaluation off.",
    )
    eval_temperature: float = chz.field(
        validator=at_least(0), default=0.0, doc="Sampling temperature of validation rollouts."
    )
    save_every: int = chz.field(
        validator=at_least(0),
        default=0,
        doc="Full checkpoint (weights + optimiser) every N steps; 0 saves only at the end.",
    )
    transcripts_per_step: int = chz.field(
        validator=at_least(0),
        default=8,
        doc="Rollouts per step written with their calls (messages, token ids, logprobs, drift) to "
        "log_path/transcripts/step_NNNNNN.jsonl (validation: eval_NNNNNN.jsonl), besides every excluded or "
        "drifting one (up to as many again); every rollout gets a summary row. At most 1 MB per step. 0: none.",
    )
    wandb_project: str | None = chz.field(
        default=None, doc="Weights & Biases project to log to (None: local files only)."
    )
    wandb_name: str | None = chz.field(default=None, doc="Weights & Biases run name.")

    # -- Run safety: resuming, stopping, warnings ---------------------------------------------------
    fresh_start: bool = chz.field(
        default=False,
        doc="Start from step 0 with new weights even if `log_path` holds an earlier run; its metrics.jsonl and "
        "checkpoints.jsonl are renamed aside (`.old-<time>`). Without it, a `log_path` with metrics but no "
        "loadable checkpoint refuses to start.",
    )
    identity_override: bool = chz.field(
        default=False,
        doc="Resume a `log_path` whose recorded run (run.json) had another model, renderer, LoRA rank, loss, "
        "policies or dataset. Without it such a resume is refused; with it the change is recorded in run.json "
        "and the first step's metrics (`run/identity_override`).",
    )
    max_empty_steps: int = chz.field(
        validator=at_least(0),
        default=3,
        doc="Stop the run (an error, exit code 1) after this many steps in a row with no rollout to train on "
        "(all failed, timed out or without reward); each such step is logged as an error. 0 never stops.",
    )
    warn_flat_reward_steps: int = chz.field(
        validator=at_least(0),
        default=3,
        doc="Warn once when this many steps in a row had nothing to learn from (every group scored the same, "
        "or no datum trained); a note instead when the reward rose to that level (learnt). 0 never warns.",
    )

    # -- Tinker call retries (transient errors, the SDK's own rules) --------------------------------
    tinker_max_attempts: int = chz.field(
        validator=at_least(1),
        default=6,
        doc="Tries per Tinker call (sampling, training, saving, client creation) on transient errors "
        "(5xx, 408, 409, 429, connection errors: the SDK's own rules); 1 disables retries.",
    )
    tinker_retry_base_s: float = chz.field(
        validator=at_least(0),
        default=0.5,
        doc="First retry delay; doubled per retry up to `tinker_retry_max_s`, with +-25% jitter.",
    )
    tinker_retry_max_s: float = chz.field(
        validator=at_least(0), default=10.0, doc="Longest delay between two tries of a Tinker call."
    )

    @chz.validate
    def _cross_field_rules(self) -> None:
        check_train_config(self)

    def policy_settings(self, name: str) -> ResolvedPolicy:
        """Policy ``name``'s settings with the ``TrainConfig`` defaults filled in."""
        return ResolvedPolicy.of(self.policies[name], name, self)

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


def bind_cookbook_types() -> None:
    """Make ``AsyncConfig``/``StreamMinibatchConfig`` names of this module.

    chz resolves ``TrainConfig``'s annotations in this module when it builds a ``Blueprint``
    (command-line ``key=value`` settings). They are the cookbook's classes, whose module takes
    seconds to import, so they are imported here on demand rather than with the config: a
    misconfiguration that needs no Blueprint is reported before that cost.
    """
    from tinker_cookbook.rl.train import AsyncConfig, StreamMinibatchConfig

    globals().update(AsyncConfig=AsyncConfig, StreamMinibatchConfig=StreamMinibatchConfig)
