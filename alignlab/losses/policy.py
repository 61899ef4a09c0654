"""Policy-gradient losses (PPO clipped surrogate, clipped value loss) and loss aggregation.

Token-level tensors are (B, T) over response tokens; `mask` (bool or {0, 1}) marks the valid
ones. Per-token losses are combined into a scalar by one of the aggregation helpers, which is
where PPO (token mean), GRPO (sequence mean) and Dr. GRPO (sum / constant) differ.
"""

from __future__ import annotations

import math

import torch

from alignlab.ops import masked_mean, masked_sum


def token_mean(
    losses: torch.Tensor,
    mask: torch.Tensor,
    *,
    tokens: float | None = None,
    sequences: float | None = None,
) -> torch.Tensor:
    """Mean over all masked tokens of the batch: Σ_{b,t} m_{bt} ℓ_{bt} / Σ_{b,t} m_{bt}.

    Every token weighs the same (PPO in TRL/OpenRLHF; the "token-level" loss of DAPO, Yu et
    al. 2025, arXiv:2503.14476). `tokens` replaces the denominator with the token count of
    the whole mini-batch when this batch is one micro-batch of it (`sequences` is unused; every
    aggregation takes both). Shapes: losses, mask (B, T); returns () scalar.
    """
    if tokens is None:
        return masked_mean(losses, mask)
    return masked_sum(losses, mask) / max(tokens, 1.0)


def sequence_mean(
    losses: torch.Tensor,
    mask: torch.Tensor,
    *,
    tokens: float | None = None,
    sequences: float | None = None,
) -> torch.Tensor:
    """Mean per sequence, then mean over sequences: (1/B) Σ_b (1/|o_b|) Σ_t m_{bt} ℓ_{bt}.

    GRPO's aggregation (Shao et al. 2024, arXiv:2402.03300, eq. 3). A row with no valid token
    contributes 0 and still counts in B; `sequences` replaces B by the mini-batch's count.
    Shapes: losses, mask (B, T); returns () scalar.
    """
    per_sequence = masked_mean(losses, mask, dim=-1)
    return per_sequence.sum() / (sequences if sequences is not None else len(per_sequence))


def sequence_sum(
    losses: torch.Tensor,
    mask: torch.Tensor,
    *,
    tokens: float | None = None,
    sequences: float | None = None,
) -> torch.Tensor:
    """Sum per sequence, then mean over sequences: (1/B) Σ_b Σ_t m_{bt} ℓ_{bt}.

    The sequence-level REINFORCE estimator of RLOO (Ahmadian et al. 2024, arXiv:2402.14740),
    each response's log-likelihood weighted by its advantage. `sequences` replaces B.
    Shapes: losses, mask (B, T); returns () scalar.
    """
    per_sequence = masked_sum(losses, mask, dim=-1)
    return per_sequence.sum() / (sequences if sequences is not None else len(per_sequence))


def token_sum_constant(
    losses: torch.Tensor,
    mask: torch.Tensor,
    max_len: int,
    *,
    tokens: float | None = None,
    sequences: float | None = None,
) -> torch.Tensor:
    """Sum per sequence divided by a constant, then mean over sequences:
    (1/B) Σ_b (1/L_max) Σ_t m_{bt} ℓ_{bt}.

    Dr. GRPO (Liu et al. 2025, arXiv:2503.20783): removes the 1/|o_b| length bias of GRPO; the
    constant is the generation budget (max new tokens), fixed for the whole run. `sequences`
    replaces B. Shapes: losses, mask (B, T); max_len int; returns () scalar.
    """
    return sequence_sum(losses, mask, sequences=sequences) / max_len


def ppo_clip_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> torch.Tensor:
    """Per-token PPO clipped surrogate loss (negated objective, to minimise).

    ρ_t = exp(log π_θ(a_t) - log π_old(a_t))
    ℓ_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε_low, 1 + ε_high))   ( = -min(ρ A, clip(ρ) A) )

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347, eq. 7,
    with ε_low = ε_high = `clip_eps`; `clip_eps_high` decouples the upper bound (DAPO's
    clip-higher, Yu et al. 2025, arXiv:2503.14476, eq. 10: ε_high > ε_low leaves room for
    low-probability tokens to grow). When the clipped term is selected the gradient is zero
    (ρ beyond the bound in the direction the advantage pushes).

    Shapes:
        logps: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logps: (B, T) same under the policy that sampled them (treated as constant).
        advantages: (B, T), or (B, 1) for a sequence-level advantage (broadcast), constant.
        returns: (B, T) per-token losses (not masked: aggregate with a helper of this module).
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logps - old_logps.detach())
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    return torch.maximum(unclipped, clipped)


def gspo_log_ratio(
    logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """log s_i = (1/|y_i|) Σ_t m_it (log π_θ(y_it) - log π_old(y_it)): GSPO's length-normalised
    sequence log-ratio (Zheng et al. 2025, arXiv:2507.18071, eq. 7). (B, T) in, (B, 1) out."""
    log_ratio = (logps - old_logps.detach()) * mask
    return log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


def gspo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> torch.Tensor:
    """Per-token GSPO loss: the length-normalised sequence ratio, clipped per sequence.

    log s_i = (1/|y_i|) Σ_t m_{it} (log π_θ(y_it) - log π_old(y_it))       (eq. 7)
    s_it = sg[s_i] · π_θ(y_it) / sg[π_θ(y_it)]                             (GSPO-token, eq. 13)
    ℓ_it = max(-A_it s_it, -A_it clip(s_it, 1 - ε_low, 1 + ε_high))

    Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071. s_it equals
    s_i in value and has gradient s_i ∇log π_θ(y_it), so with a sequence-level advantage
    (B, 1) and `sequence_mean` the loss and its gradient are exactly GSPO's (eq. 5:
    -(1/G) Σ_i min(s_i A_i, clip(s_i) A_i)); with per-token advantages (B, T) it is the
    GSPO-token variant. The clip acts on the whole sequence: every token of a clipped
    sequence gets no gradient. The paper's ranges are small (ε_low 3e-4, ε_high 4e-4):
    s_i is a geometric mean of token ratios, far closer to 1 than any one of them.

    Shapes: logps (with grad), old_logps (B, T); advantages (B, 1) or (B, T); mask (B, T);
    returns (B, T) per-token losses (aggregate with `sequence_mean`).
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_s = gspo_log_ratio(logps, old_logps, mask)
    ratio = torch.exp(log_s.detach() + logps - logps.detach())
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    return torch.maximum(unclipped, clipped)


def cispo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float,
) -> torch.Tensor:
    """Per-token CISPO loss: REINFORCE weighted by the clipped, stop-gradient IS ratio.

    r̂_t = clip(ρ_t, 1 - ε_low, 1 + ε_high)
    ℓ_t = -sg(r̂_t) · A_t · log π_θ(y_t)

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning
    Attention", arXiv:2506.13585, sec. 3.1, eq. 4-5 (with its token-level normalisation
    1/Σ|o_i|: aggregate with `token_mean`). Unlike PPO's clip, which zeroes the gradient of
    clipped tokens, every token keeps a gradient; the clip only bounds its weight. The paper
    sets no effective lower bound (a large ε_low) and tunes ε_high.

    Shapes: logps (with grad), old_logps (B, T); advantages (B, 1) or (B, T); returns (B, T).
    """
    ratio = torch.exp(logps.detach() - old_logps.detach())
    weight = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)
    return -weight * advantages.detach() * logps


def truncated_is_weights(
    old_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
    level: str = "token",
) -> torch.Tensor:
    """Truncated importance weights for a sampler whose log-probs differ from the trainer's.

    token:    w_t = min(π_old(y_t) / π_sampler(y_t), C)
    sequence: w_t = min(Π_t π_old(y_t) / π_sampler(y_t), C)        (the same for every token)

    Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
    (TIS, https://fengyao.notion.site/off-policy-rl): rollouts sampled by an inference engine
    (vLLM) come from π_sampler ≠ π_old of the trainer's forward; multiplying each token's
    policy-gradient loss by w (detached) corrects the expectation, truncated at C for variance.

    Shapes: old_logps, sampler_logps, mask (B, T); returns (B, T) detached weights (1 where
    masked out).
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    log_w = (old_logps.detach() - sampler_logps.detach()) * mask
    if level == "sequence":
        log_w = log_w.sum(-1, keepdim=True).expand_as(log_w)
    weights = torch.exp(log_w.clamp(max=math.log(cap)))  # clamped first: Π_t can overflow
    return torch.where(mask.bool(), weights, torch.ones_like(weights))


def ppo_diagnostics(
    losses: torch.Tensor, log_ratio: torch.Tensor, advantages: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-token diagnostics of a clipped surrogate (detached, (B, T); average over tokens).

    `log_ratio` is the log of the ratio the surrogate clipped: log π_θ - log π_old per token
    (PPO), or GSPO's log s_i broadcast over the sequence. clip_fraction: 1 where the clipped
    term is strictly the larger (selected and active: no gradient), from the surrogate's
    per-token `losses`. approx_kl: (ρ - 1) - log ρ, the k3 estimate of KL(π_old || π_θ)
    (Schulman 2020, http://joschu.net/blog/kl-approx.html).
    """
    with torch.no_grad():
        log_ratio = log_ratio.detach()
        ratio = torch.exp(log_ratio)
        unclipped = -advantages.detach() * ratio
        return {
            "clip_fraction": (losses.detach() > unclipped).to(ratio.dtype),
            "approx_kl": ratio - 1.0 - log_ratio,
        }


def clipped_value_token_losses(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_eps: float
) -> torch.Tensor:
    """Per-token PPO2-style clipped value loss.

    V_clip = V_old + clip(V - V_old, -ε, ε)
    ℓ_t = ½ max((V_t - R_t)², (V_clip,t - R_t)²)

    The value clipping of OpenAI baselines' ppo2 (Dhariwal et al. 2017) used by InstructGPT-style
    RLHF implementations (Ziegler et al. 2019, arXiv:1909.08593; TRL; OpenRLHF); it is not in
    the PPO paper itself. ε = inf: the plain squared error.

    Shapes: values (B, T) current predictions (with grad); old_values (B, T) predictions at
    sampling time and returns (B, T) targets R, both constant; returns (B, T), not masked.
    """
    old_values = old_values.detach()
    returns = returns.detach()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2)
