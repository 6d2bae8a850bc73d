"""The built-in losses, with the service's input keys, config keys and semantics (token-wise, summed).

Written from Tinker's loss documentation ("Loss Functions", "GSPO", "StableReinforce"); ``p`` is the
trained model's logprob of each target token, ``q`` the sampler's, ``A`` the advantage, ``sg`` a
stop-gradient:

- ``cross_entropy``: ``-(weights * p).sum()``; inputs ``target_tokens``, ``weights``.
- ``importance_sampling``: ``-(exp(p - q) * A).sum()``; inputs ``target_tokens``, ``logprobs``, ``advantages``.
- ``ppo``: ``-min(r * A, clip(r, lo, hi) * A).sum()`` with ``r = exp(p - q)``.
- ``cispo``: ``-(sg(clip(r, lo, hi)) * p * A).sum()``.
- ``dro``: ``-(p * A - beta / 2 * (p - q) ** 2).sum()``; config ``beta`` (default 0.05).
- ``gspo`` (GSPO-token): every token's ratio has the value of the sequence ratio
  ``s = exp(mean over sequence_ratio_mask of (p - q))`` and the gradient of its own ``p``:
  ``r_t = sg(s) * exp(p_t - sg(p_t))``; then PPO's clipped min. Inputs add ``sequence_ratio_mask``.
- ``stable_reinforce``: ``q`` is the sampler's logprob *recorded by the service* for the sequence the
  datum's provenance names (``record_stability_info=True``), not a client input. The published page
  gives the contract, not the objective; the simulator's objective is REINFORCE with a truncated
  stop-gradient importance weight plus an optional quadratic penalty,
  ``-(sg(min(exp(p - q), 1)) * p * A).sum() + kl_coeff / 2 * ((p - q) ** 2).sum()``, over the tokens of
  sampled runs (a token outside them must have advantage 0). Inputs ``target_tokens``,
  ``advantages`` (``logprobs`` may accompany; unused); config ``kl_coeff`` (default 0).

``lo``/``hi`` are ``loss_fn_config``'s ``clip_low_threshold``/``clip_high_threshold`` (default 0.8/1.2).
Every loss is written as ``surrogate(p, sg(p))``: stop-gradient factors read only the second argument,
so a finite-difference test of ``surrogate(p(theta), p(theta0))`` checks the gradient exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from . import errors

_RL = ("target_tokens", "logprobs", "advantages")
REQUIRED: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": _RL,
    "ppo": _RL,
    "cispo": _RL,
    "dro": _RL,
    "gspo": (*_RL, "sequence_ratio_mask"),
    "stable_reinforce": ("target_tokens", "advantages"),
}
OPTIONAL: dict[str, frozenset[str]] = {
    name: frozenset({"weights", "logprobs"} if name == "stable_reinforce" else {"weights"})
    for name in REQUIRED
}
_CLIP = frozenset({"clip_low_threshold", "clip_high_threshold"})
CONFIG_KEYS: dict[str, frozenset[str]] = {
    "cross_entropy": frozenset(),
    "importance_sampling": frozenset(),
    "ppo": _CLIP,
    "cispo": _CLIP,
    "dro": frozenset({"beta"}),
    "gspo": _CLIP,
    "stable_reinforce": frozenset({"kl_coeff"}),
}
NEEDS_PROVENANCE = frozenset({"stable_reinforce"})
"""Losses whose datums must name their sampled sequences (``Datum.with_provenance``)."""


def check(loss_fn: str, keys: set[str], config: Mapping[str, float | str] | None) -> None:
    """Reject what the service rejects: unknown losses, missing or unexpected inputs, bad config."""
    if loss_fn not in REQUIRED:
        raise errors.bad_request(
            f"loss_fn {loss_fn!r} is not supported by the simulator; use one of {sorted(REQUIRED)}",
            path="forward_backward",
        )
    required = set(REQUIRED[loss_fn])
    optional = OPTIONAL[loss_fn]
    # ``weights`` may accompany every loss (the docs' RL datums carry it); cross_entropy
    # defaults it to ones. Anything else (e.g. the cookbook's ``mask``) is refused.
    missing = required - keys - optional
    extra = keys - required - optional
    if missing or extra:
        raise errors.bad_request(
            f"loss_fn {loss_fn!r} takes loss_fn_inputs {sorted(required)}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}",
            path="forward_backward",
        )
    unknown = set(config or {}) - CONFIG_KEYS[loss_fn]
    if unknown:
        raise errors.bad_request(f"unknown loss_fn_config keys for {loss_fn!r}: {sorted(unknown)}")
    for key, value in (config or {}).items():
        if not isinstance(value, (int, float)):
            raise errors.bad_request(f"loss_fn_config[{key!r}] must be a number, got {value!r}")


def _number(config: Mapping[str, float | str] | None, key: str, default: float) -> float:
    return float((config or {}).get(key, default))


def _clipped_min(
    ratio: torch.Tensor, advantages: torch.Tensor, config: Mapping[str, float | str] | None
) -> torch.Tensor:
    clipped = torch.clamp(
        ratio, _number(config, "clip_low_threshold", 0.8), _number(config, "clip_high_threshold", 1.2)
    )
    return -torch.minimum(ratio * advantages, clipped * advantages).sum()


def surrogate(
    loss_fn: str,
    logprobs: torch.Tensor,
    frozen: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    config: Mapping[str, float | str] | None,
    recorded: torch.Tensor | None = None,
) -> torch.Tensor:
    """One datum's loss with every stop-gradient factor read from ``frozen`` (see the module doc).

    ``recorded`` (``stable_reinforce`` only): the sampler's recorded logprob of each target token,
    NaN where the token is not part of a sampled run.
    """
    if loss_fn == "cross_entropy":
        weights = inputs.get("weights")
        return -((torch.ones_like(logprobs) if weights is None else weights) * logprobs).sum()
    advantages = inputs["advantages"]
    if loss_fn == "stable_reinforce":
        if recorded is None:
            raise errors.bad_request("stable_reinforce needs datums with provenance", path="forward_backward")
        sampled = ~torch.isnan(recorded)
        if bool((advantages[~sampled] != 0).any()):
            raise errors.bad_request(
                "stable_reinforce trains sampled tokens only: a token outside the sampled runs "
                "of loss_fn_input_spans has a nonzero advantage",
                path="forward_backward",
            )
        p, p0, q, a = logprobs[sampled], frozen[sampled], recorded[sampled], advantages[sampled]
        weight = torch.exp(torch.clamp(p0 - q, max=0.0))
        penalty = 0.5 * _number(config, "kl_coeff", 0.0) * ((p - q) ** 2).sum()
        return -(weight * p * a).sum() + penalty
    q = inputs["logprobs"]
    if loss_fn == "importance_sampling":
        return -(torch.exp(logprobs - q) * advantages).sum()
    if loss_fn == "ppo":
        return _clipped_min(torch.exp(logprobs - q), advantages, config)
    if loss_fn == "cispo":
        low, high = _number(config, "clip_low_threshold", 0.8), _number(config, "clip_high_threshold", 1.2)
        coefficient = torch.clamp(torch.exp(frozen - q), low, high)
        return -(coefficient * logprobs * advantages).sum()
    if loss_fn == "dro":
        beta = _number(config, "beta", 0.05)
        return -(logprobs * advantages - 0.5 * beta * (logprobs - q) ** 2).sum()
    if loss_fn == "gspo":
        in_ratio = inputs["sequence_ratio_mask"] != 0
        if not bool(in_ratio.any()):
            raise errors.bad_request("gspo: sequence_ratio_mask marks no token", path="forward_backward")
        log_ratio = (frozen - q)[in_ratio].mean()
        return _clipped_min(torch.exp(log_ratio + logprobs - frozen), advantages, config)
    raise errors.bad_request(
        f"loss_fn {loss_fn!r} is not supported by the simulator", path="forward_backward"
    )


def datum_loss(
    loss_fn: str,
    logprobs: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    config: Mapping[str, float | str] | None,
    recorded: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of one datum (a scalar tensor); the batch loss is the sum over datums."""
    return surrogate(loss_fn, logprobs, logprobs.detach(), inputs, config, recorded)
