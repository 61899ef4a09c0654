"""Per-token KL estimators and KL-coefficient controllers.

Estimators (Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html)
estimate KL(p || q) from a token sampled from p: `logps` = log p(x) (the policy that sampled),
`ref_logps` = log q(x) (the reference). With log r = log q(x) - log p(x):
k1 = -log r (unbiased, high variance, can be negative), k2 = ½ (log r)² (biased, low
variance, accurate when p ≈ q), k3 = (r - 1) - log r (unbiased, non-negative, lower variance
than k1). All are elementwise: any shape in, same shape out.
"""

from __future__ import annotations

import torch


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = log p(x) - log q(x); unbiased estimate of KL(p || q) for x ~ p.

    Schulman 2020. Shapes: logps, ref_logps: (...) per-token log-probs; returns (...).
    """
    return logps - ref_logps


def kl_k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log p(x) - log q(x))²; biased (it estimates an f-divergence that matches KL to
    second order), low variance when p ≈ q.

    Schulman 2020. Shapes: logps, ref_logps: (...) per-token log-probs; returns (...).
    """
    return 0.5 * (logps - ref_logps) ** 2


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = e^(log q - log p) - 1 - (log q - log p); unbiased for KL(p || q), always >= 0.

    Schulman 2020. Not clamped: a very large log q - log p overflows exp (caller's concern).
    Shapes: logps, ref_logps: (...) per-token log-probs; returns (...).
    """
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - 1.0 - log_ratio


class AdaptiveKLController:
    """Adaptive KL coefficient β, `kl_coef` (Ziegler et al. 2019, arXiv:1909.08593, sec. 2.2).

    e = clip(KL / target - 1, -0.2, 0.2)
    β ← β · (1 + e · n_steps / horizon)

    The paper writes β_{t+1} = β_t (1 + K_β e_t) with K_β = 0.1 per batch; here K_β =
    n_steps / horizon (the form of the released lm-human-preferences code and TRL), so the
    step size scales with the number of samples the KL was measured on.
    """

    def __init__(self, kl_coef: float, target: float, horizon: float) -> None:
        self.kl_coef = float(kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Update β from the KL measured on the last `n_steps` samples; returns the new β."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * n_steps / self.horizon
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        """Everything needed to resume: current β, target and horizon."""
        return {"kl_coef": self.kl_coef, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore from `state_dict()` (or a checkpoint of before the rename: "value")."""
        self.kl_coef = float(state.get("kl_coef", state.get("value")))
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])


class FixedKLController:
    """Constant KL coefficient with the `AdaptiveKLController` interface; `update` is a no-op."""

    def __init__(self, kl_coef: float) -> None:
        self.kl_coef = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """No change; returns β."""
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        """The coefficient."""
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore from `state_dict()` (or a checkpoint of before the rename: "value")."""
        self.kl_coef = float(state.get("kl_coef", state.get("value")))
