"""The built-in losses, with the service's input keys and semantics (token-wise, summed).

- ``cross_entropy``: ``-(weights * logprobs).sum()``; inputs ``target_tokens``, ``weights``.
- ``importance_sampling``: ``-(exp(logprobs - sampling_logprobs) * advantages).sum()``;
  inputs ``target_tokens``, ``logprobs``, ``advantages``.
- ``ppo``: ``-min(ratio * A, clip(ratio, clip_low_threshold, clip_high_threshold) * A).sum()``
  with thresholds from ``loss_fn_config`` (default 0.8 and 1.2, i.e. epsilon 0.2).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from . import errors

REQUIRED = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
}
CONFIG_KEYS = {
    "cross_entropy": set(),
    "importance_sampling": set(),
    "ppo": {"clip_low_threshold", "clip_high_threshold"},
}


def check(loss_fn: str, keys: set[str], config: Mapping[str, float | str] | None) -> None:
    """Reject what the service rejects: unknown losses, missing or unexpected inputs, bad config."""
    if loss_fn not in REQUIRED:
        raise errors.bad_request(
            f"loss_fn {loss_fn!r} is not supported by the simulator; use one of {sorted(REQUIRED)}",
            path="forward_backward",
        )
    required = set(REQUIRED[loss_fn])
    # ``weights`` may accompany every loss (the docs' RL datums carry it); cross_entropy
    # defaults it to ones. Anything else (e.g. the cookbook's ``mask``) is refused.
    missing = required - keys - {"weights"}
    extra = keys - required - {"weights"}
    if missing or extra:
        raise errors.bad_request(
            f"loss_fn {loss_fn!r} takes loss_fn_inputs {sorted(required)}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}",
            path="forward_backward",
        )
    unknown = set(config or {}) - CONFIG_KEYS[loss_fn]
    if unknown:
        raise errors.bad_request(f"unknown loss_fn_config keys for {loss_fn!r}: {sorted(unknown)}")


def datum_loss(
    loss_fn: str,
    logprobs: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    config: Mapping[str, float | str] | None,
) -> torch.Tensor:
    """The loss of one datum (a scalar tensor); the batch loss is the sum over datums."""
    if loss_fn == "cross_entropy":
        weights = inputs.get("weights")
        if weights is None:
            weights = torch.ones_like(logprobs)
        return -(weights * logprobs).sum()
    ratio = torch.exp(logprobs - inputs["logprobs"])
    advantages = inputs["advantages"]
    if loss_fn == "importance_sampling":
        return -(ratio * advantages).sum()
    low = float((config or {}).get("clip_low_threshold", 0.8))
    high = float((config or {}).get("clip_high_threshold", 1.2))
    clipped = torch.clamp(ratio, low, high)
    return -torch.minimum(ratio * advantages, clipped * advantages).sum()
