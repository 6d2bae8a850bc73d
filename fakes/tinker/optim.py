"""AdamW as the service applies it at ``optim_step`` (torch.optim.AdamW semantics).

Decoupled weight decay, bias correction, and optional clipping of the global gradient norm
(``grad_clip_norm > 0``). State lives in plain tensors so checkpoints can save and restore it.
"""

from __future__ import annotations

import math

import torch


class Adam:
    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        self.params = params
        self.step_count = 0
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}

    def step(
        self,
        grads: dict[str, torch.Tensor],
        *,
        learning_rate: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        grad_clip_norm: float,
    ) -> dict[str, float]:
        """Apply one update in place; returns the service-style metrics."""
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        scale = 1.0
        if grad_clip_norm > 0 and norm > grad_clip_norm:
            scale = grad_clip_norm / (norm + 1e-6)
        self.step_count += 1
        t = self.step_count
        correction1 = 1 - beta1**t
        correction2 = 1 - beta2**t
        with torch.no_grad():
            for name, param in self.params.items():
                grad = grads[name] * scale
                if weight_decay:
                    param.mul_(1 - learning_rate * weight_decay)
                self.exp_avg[name].mul_(beta1).add_(grad, alpha=1 - beta1)
                self.exp_avg_sq[name].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (self.exp_avg_sq[name] / correction2).sqrt_().add_(eps)
                param.addcdiv_(self.exp_avg[name], denom, value=-learning_rate / correction1)
        return {"grad_norm:mean": norm, "learning_rate:mean": learning_rate}

    def state_dict(self) -> dict[str, object]:
        return {"step": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.step_count = int(state["step"])  # type: ignore[call-overload]
        for key in ("exp_avg", "exp_avg_sq"):
            saved = state[key]
            assert isinstance(saved, dict)
            target = getattr(self, key)
            for name in target:
                if name in saved:
                    target[name] = saved[name].clone()
