"""Policy-gradient losses (PPO clipped surrogate, clipped value loss) and loss aggregation.

Token-level tensors are (B, T) over response tokens; `mask` (bool or {0, 1}) marks the valid
ones. Per-token losses are combined into a scalar by one of the aggregation helpers, which is
where PPO (token mean), GRPO (sequence mean) and Dr. GRPO (sum / constant) differ.
"""

from __future__ import annotations

import torch

from alignlab.ops import masked_mean, masked_sum


def token_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over all masked tokens of the batch: Σ_{b,t} m_{bt} ℓ_{bt} / Σ_{b,t} m_{bt}.

    Every token weighs the same (PPO in TRL/OpenRLHF; "token-level" loss of DAPO, Yu et al.
    2025, arXiv:2503.14476). Shapes: losses, mask (B, T); returns () scalar.
    """
    return masked_mean(losses, mask)


def sequence_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per sequence, then mean over sequences: (1/B) Σ_b (1/|o_b|) Σ_t m_{bt} ℓ_{bt}.

    GRPO's aggregation (Shao et al. 2024, arXiv:2402.03300, eq. 3). A row with no valid token
    contributes 0 and still counts in B. Shapes: losses, mask (B, T); returns () scalar.
    """
    return masked_mean(losses, mask, dim=-1).mean()


def token_sum_constant(losses: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Sum per sequence divided by a constant, then mean over sequences:
    (1/B) Σ_b (1/L_max) Σ_t m_{bt} ℓ_{bt}.

    Dr. GRPO (Liu et al. 2025, arXiv:2503.20783): removes the 1/|o_b| length bias of GRPO; the
    constant is the generation budget (max new tokens), fixed for the whole run.
    Shapes: losses, mask (B, T); max_len int; returns () scalar.
    """
    return masked_sum(losses, mask, dim=-1).mean() / max_len


def ppo_clip_token_losses(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> torch.Tensor:
    """Per-token PPO clipped surrogate loss (negated objective, to minimise).

    ρ_t = exp(log π_θ(a_t) - log π_old(a_t))
    ℓ_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))   ( = -min(ρ A, clip(ρ) A) )

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347, eq. 7.
    When the clipped term is selected the gradient is zero (ρ beyond 1 ± ε in the direction the
    advantage pushes).

    Shapes:
        logps: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logps: (B, T) same under the policy that sampled them (treated as constant).
        advantages: (B, T), or (B, 1) for a sequence-level advantage (broadcast), constant.
        returns: (B, T) per-token losses (not masked: aggregate with a helper of this module).
    """
    ratio = torch.exp(logps - old_logps.detach())
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return torch.maximum(unclipped, clipped)


def ppo_clip_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate loss, averaged over all masked tokens of the batch (`token_mean`).

    loss = Σ_{b,t} m_{bt} max(-A ρ, -A clip(ρ, 1 - ε, 1 + ε)) / Σ_{b,t} m_{bt}

    Schulman et al. 2017, arXiv:1707.06347, eq. 7. For other aggregations (GRPO, Dr. GRPO)
    use `ppo_clip_token_losses` with `sequence_mean` or `token_sum_constant`.

    Diagnostics (detached): clip_fraction = fraction of masked tokens where the clipped term is
    strictly the larger (i.e. selected and active); approx_kl = masked mean of the k3 estimator
    of KL(π_old || π_θ) on the sampled tokens, (ρ - 1) - log ρ (Schulman 2020).

    Shapes:
        logps, old_logps: (B, T) log-probs of the sampled tokens (current / sampling policy).
        advantages: (B, T) or (B, 1).
        mask: (B, T) valid response tokens.
        returns: (loss (), clip_fraction (), approx_kl ()).
    """
    losses = ppo_clip_token_losses(logps, old_logps, advantages, clip_eps)
    loss = token_mean(losses, mask)
    with torch.no_grad():
        log_ratio = logps.detach() - old_logps.detach()
        ratio = torch.exp(log_ratio)
        unclipped = -advantages.detach() * ratio
        clipped_active = (losses.detach() > unclipped).to(losses.dtype)
        clip_fraction = masked_mean(clipped_active, mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return loss, clip_fraction, approx_kl


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """PPO2-style clipped value loss, averaged over all masked tokens of the batch.

    V_clip = V_old + clip(V - V_old, -ε, ε)
    loss = ½ Σ_{b,t} m_{bt} max((V - R)², (V_clip - R)²) / Σ_{b,t} m_{bt}

    The value clipping of OpenAI baselines' ppo2 (Dhariwal et al. 2017) used by InstructGPT-style
    RLHF implementations (Ziegler et al. 2019, arXiv:1909.08593; TRL; OpenRLHF); it is not in
    the PPO paper itself.

    Shapes:
        values: (B, T) current value predictions (with grad).
        old_values: (B, T) value predictions at sampling time (constant).
        returns: (B, T) value targets R (e.g. GAE returns, constant).
        mask: (B, T) valid response tokens.
        returns: () scalar.
    """
    old_values = old_values.detach()
    returns = returns.detach()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    losses = torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2)
    return 0.5 * masked_mean(losses, mask)
