"""Knobs of the simulated service, set per ``ServiceClient`` or from ``AGL_TINKER_SIM_*``.

They exist so tests can make the fake service slow, flaky, or produce non-canonical
tokenizations on purpose, while the default stays fast, reliable and canonical.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tinker import types

ENV_PREFIX = "AGL_TINKER_SIM_"
COST_KNOBS = (
    "sample_ttft_s",
    "sample_token_s",
    "train_token_s",
    "optim_step_s",
    "save_sampler_s",
    "sampler_load_s",
)
"""The cost model's knobs (seconds), see :class:`SimConfig`."""


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Service-level knobs.

    - ``latency_s``: seconds every call takes before its future completes (not a CPU spin:
      concurrent calls overlap, like network latency).
    - ``failure_rate``: probability that a call fails with a transient, retryable SDK error
      (``tinker.InternalServerError``, HTTP 503); drawn from a RNG seeded by ``failure_seed``.
      Every call kind can fail: client creation (``create_model``, ``load_weights``,
      ``create_sampling_session``, ``create_sampling_client``), ``asample``, ``forward``,
      ``forward_backward``, ``optim_step``, ``save_state``, ``save_weights_for_sampler``,
      ``load_state``, REST calls. The failure is raised before the call has any effect.
    - ``failure_operations``: restrict failures to these operation names (empty: all); from the
      environment as a comma-separated list.
    - ``drift``: probability that a sampled answer uses a non-canonical tokenization of its text
      (one token split into two whose bytes concatenate to it). Part of the model's
      distribution, so sampler and trainer logprobs stay equal.
    - ``background_eps``: initial probability, per answer token, of leaving the prior's
      candidate answers for free text (a trainable gate afterwards).
    - ``root_dir``: where checkpoints live (``$AGL_TINKER_SIM_DIR``, else
      ``~/.cache/agl-tinker/sim``).

    The cost model (all 0 by default, which keeps the simulator as fast as it computes; each cost
    is a floor on a call's duration: the simulator's own compute time counts towards it):

    - ``sample_ttft_s`` + ``sample_token_s`` per sampled token (of the longest sequence of the
      call): how long a ``sample``/``compute_logprobs`` call takes. Timer-based, so concurrent
      sampling calls overlap, as on the service's batched samplers.
    - ``train_token_s``: per token of the datums' model inputs, for ``forward``/``forward_backward``.
    - ``optim_step_s``: each ``optim_step``.
    - ``save_sampler_s``: writing the weights of each ``save_weights_for_sampler``/
      ``save_weights_and_get_sampling_client`` (and ``save_weights_external``).
    - ``sampler_load_s``: the serving replicas loading the saved weights. Who waits for it follows
      the SDK's ``SamplingClientKind`` contract (:meth:`save_hold_s`,
      :attr:`inflight_visible_after_s`): a snapshot save (and a ``save_weights_for_sampler`` path,
      whose clients load it) completes once loaded, so it holds the training queue
      ``save_sampler_s + sampler_load_s``; an in-flight save "does not wait for serving replicas to
      finish loading weights", so it holds the queue ``save_sampler_s`` only and its weights reach
      samplers ``sampler_load_s`` (plus ``inflight_delay_s``) after it completes.

    Training costs hold the training client's request queue (one at a time per training client,
    in submission order, as on the service); different training clients do not wait for each other.

    Off-policy contracts:

    - ``inflight_delay_s``: how long a ``kind="inflight"`` save's weights, once loaded, take to
      reach the samplers (default 0: at once); until then existing clients may sample on the
      previous weights, and a client created at that save waits for them: never weights older than
      its own save (see ``fakes.tinker.inflight``).
    - ``stability_ttl_s``: how long a sequence recorded with ``record_stability_info=True`` can be
      trained on after its last use (default one day, as documented; see ``fakes.tinker.stability``).
    """

    latency_s: float = 0.0
    failure_rate: float = 0.0
    failure_seed: int = 0
    failure_operations: tuple[str, ...] = ()
    drift: float = 0.0
    background_eps: float = 1e-4
    root_dir: Path | None = None
    sample_ttft_s: float = 0.0
    sample_token_s: float = 0.0
    train_token_s: float = 0.0
    optim_step_s: float = 0.0
    save_sampler_s: float = 0.0
    sampler_load_s: float = 0.0
    inflight_delay_s: float = 0.0
    stability_ttl_s: float = 86400.0

    def __post_init__(self) -> None:
        ops = self.failure_operations
        ops = ops.split(",") if isinstance(ops, str) else ops
        object.__setattr__(self, "failure_operations", tuple(op.strip() for op in ops if op.strip()))
        for name in ("latency_s", "inflight_delay_s", *COST_KNOBS):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("failure_rate", "drift"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.stability_ttl_s <= 0:
            raise ValueError(f"stability_ttl_s must be > 0, got {self.stability_ttl_s}")
        if not 0.0 < self.background_eps < 1.0:
            raise ValueError(f"background_eps must be in (0, 1), got {self.background_eps}")

    def sample_cost_s(self, n_tokens: int) -> float:
        """Modelled duration of a sampling call whose longest sequence has ``n_tokens`` tokens."""
        if not (self.sample_ttft_s or self.sample_token_s):
            return 0.0
        return self.sample_ttft_s + self.sample_token_s * n_tokens

    def train_cost_s(self, n_tokens: int) -> float:
        """Modelled duration of a ``forward``/``forward_backward`` call over ``n_tokens`` input tokens."""
        return self.train_token_s * n_tokens

    def save_hold_s(self, kind: types.SamplingClientKind) -> float:
        """How long a save-for-sampler of ``kind`` holds the training queue. ``"snapshot"`` (also a
        ``save_weights_for_sampler`` path, whose clients serve it at once): writing the weights, then
        the replicas loading them. ``"inflight"``: writing them only (the SDK's contract: it "does
        not wait for serving replicas to finish loading weights")."""
        return self.save_sampler_s if kind == "inflight" else self.save_sampler_s + self.sampler_load_s

    @property
    def inflight_visible_after_s(self) -> float:
        """How long after an in-flight save completes (it holds the queue ``save_sampler_s`` only)
        its weights reach samplers: the replicas load them, then the update propagates."""
        return self.sampler_load_s + self.inflight_delay_s

    @property
    def checkpoint_root(self) -> Path:
        if self.root_dir is not None:
            return Path(self.root_dir)
        env = os.environ.get(ENV_PREFIX + "DIR")
        if env:
            return Path(env)
        return Path.home() / ".cache" / "agl-tinker" / "sim"

    @classmethod
    def from_env(cls, **overrides: object) -> SimConfig:
        """Defaults, then ``AGL_TINKER_SIM_<FIELD>`` variables, then explicit ``overrides``."""
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(ENV_PREFIX + field.name.upper())
            if raw is None or field.name == "root_dir":
                continue
            if field.name == "failure_operations":
                values[field.name] = tuple(op.strip() for op in raw.split(",") if op.strip())
            else:
                values[field.name] = int(raw) if field.name == "failure_seed" else float(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown SimConfig fields: {sorted(unknown)}")
        if "root_dir" in values:
            values["root_dir"] = Path(str(values["root_dir"]))
        return cls(**values)  # type: ignore[arg-type]
