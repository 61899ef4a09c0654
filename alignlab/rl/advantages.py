"""Advantage estimators for RL fine-tuning of language models.

Pure functions. Advantages and returns are training targets, so every function here works on
detached inputs and returns tensors without gradient.

Layout: token-level tensors are (B, T) over response tokens, right-padded; `mask` (bool or
{0, 1}) marks the valid response tokens of each row, one contiguous block per row. Outputs are
0 at masked-out positions.
"""

from __future__ import annotations

import torch

from alignlab.ops import masked_whiten


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation over token-level rewards.

    δ_t = r_t + γ V_{t+1} - V_t
    A_t = δ_t + γλ A_{t+1}
    R_t = A_t + V_t   (the λ-return, target of the value loss)

    with V_{t+1} = 0 and A_{t+1} = 0 after the last valid token of each row (the episode ends
    there: terminal, no bootstrap). Schulman et al. 2015, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", arXiv:1506.02438, eq. 16.

    Shapes:
        rewards: (B, T) per-token rewards (e.g. -β·KL per token plus the sequence score on the
            last valid token).
        values: (B, T) value estimates V_t.
        mask: (B, T) valid response tokens (right-padded; rows may have different lengths).
        returns: (advantages (B, T), returns (B, T)), both 0 where mask is 0, no gradient.
    """
    with torch.no_grad():
        rewards = rewards.detach()
        values = values.detach()
        valid = mask.to(values.dtype)
        values = values * valid
        advantages = torch.zeros_like(values)
        next_value = torch.zeros_like(values[:, 0])
        next_advantage = torch.zeros_like(values[:, 0])
        for t in reversed(range(values.shape[1])):
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            advantage = (delta + gamma * lam * next_advantage) * valid[:, t]
            advantages[:, t] = advantage
            # A masked-out position contributes neither value nor advantage to t - 1.
            next_value = values[:, t]
            next_advantage = advantage
        returns = (advantages + values) * valid
    return advantages, returns


def kl_penalised_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards with the KL penalty in the reward and the score on the last token.

    r_t = 1[t = last valid token] · r(x, y) - β KL_t

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
    arXiv:1909.08593, eq. 2, spread over tokens as in Stiennon et al. 2020 (arXiv:2009.01325)
    and InstructGPT (Ouyang et al. 2022, arXiv:2203.02155). A row without a valid token gets
    no score. `kl` is the per-token estimate of the caller's choice (k1, k3, ...).

    Shapes:
        scores: (B,) sequence score r(x, y).
        kl: (B, T) per-token KL estimate.
        mask: (B, T) valid response tokens (right-padded).
        returns: (B, T) rewards, 0 where mask is 0, no gradient.
    """
    with torch.no_grad():
        valid = mask.bool()
        rewards = -kl_coef * kl.detach() * valid.to(kl.dtype)
        last = valid.shape[1] - 1 - valid.long().flip(1).argmax(dim=1)
        score = scores.detach().to(kl.dtype) * valid.any(dim=1).to(kl.dtype)
        return rewards.scatter_add(1, last.unsqueeze(1), score.unsqueeze(1))


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantages: each sample's reward minus the mean of the others.

    A_i = r_i - (1 / (K - 1)) Σ_{j ≠ i} r_j   ( = K / (K - 1) · (r_i - mean_j r_j) )

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
    from Human Feedback in LLMs", arXiv:2402.14740 (after Kool et al. 2019).

    Shapes:
        rewards: (B, K) sequence rewards of K samples per prompt, K >= 2.
        returns: (B, K) advantages, no gradient.
    """
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got K={k}")
    rewards = rewards.detach()
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def group_mean_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Each sample's reward minus the mean of its group (the K samples of its prompt).

    A_i = r_i - (1/K) Σ_j r_j

    The group-mean baseline shared by Dr. GRPO (Liu et al. 2025, arXiv:2503.20783) and
    REINFORCE++-baseline (Hu 2025, arXiv:2501.03262); GRPO divides it by the group's std.
    Unlike RLOO's leave-one-out mean it includes the sample itself (A_i is (K-1)/K of RLOO's).

    Shapes: rewards (B, K) sequence rewards of K samples per prompt; returns (B, K), no grad.
    """
    rewards = rewards.detach()
    return rewards - rewards.mean(dim=1, keepdim=True)


def grpo_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (GRPO outcome supervision), or Dr. GRPO without the std.

    scale=True:  A_i = (r_i - mean(r)) / (std(r) + ε)   std unbiased (torch default, K - 1)
    scale=False: A_i = r_i - mean(r)

    Statistics are over the K samples of one prompt (dim 1). GRPO: Shao et al. 2024,
    "DeepSeekMath", arXiv:2402.03300, sec. 4.1.2. Dr. GRPO (scale=False): Liu et al. 2025,
    "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783, which also
    drops per-sequence length normalisation (see `alignlab.losses.policy.token_sum_constant`).
    The same advantage is given to every token of the sample.

    Shapes:
        rewards: (B, K) sequence rewards of K samples per prompt (K >= 2 when scale=True).
        returns: (B, K) advantages, no gradient.
    """
    centred = group_mean_advantages(rewards)
    if not scale:
        return centred
    if rewards.shape[1] < 2:
        raise ValueError("GRPO with scale=True needs at least 2 samples per prompt")
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def reinforce_pp_advantages(
    rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """REINFORCE++ advantages: KL-penalised token returns, whitened over the whole batch.

    r_t = 1[t = last valid token] · r(x, y) - β KL_t          (`kl_penalised_rewards`)
    G_t = Σ_{i ≥ t} r_i        (γ = 1: G_t = r(x, y) - β Σ_{i ≥ t} KL_i)
    A_t = (G_t - mean(G)) / sqrt(var(G) + 1e-8)

    where mean and (population) variance run over all masked tokens of the batch
    (`alignlab.ops.masked_whiten`). Hu 2025, "REINFORCE++: A Simple and Efficient Approach for
    Aligning Large Language Models", arXiv:2501.03262, sec. 3 (token-level KL penalty and
    global advantage normalisation), as in OpenRLHF. `kl` is the per-token estimate of the
    caller's choice (e.g. `alignlab.rl.kl.kl_k1` between the sampling policy and the reference).
    "Batch" is the tensor passed in: with data parallelism, statistics are per rank unless the
    caller gathers first.

    Shapes:
        rewards: (B,) sequence score, placed at the last valid token of each row.
        kl: (B, T) per-token KL estimate.
        mask: (B, T) valid response tokens (right-padded).
        returns: (B, T) advantages, 0 where mask is 0, no gradient.
    """
    with torch.no_grad():
        valid = mask.bool()
        validf = valid.to(kl.dtype)
        token_rewards = kl_penalised_rewards(rewards, kl, valid, kl_coef)
        returns = token_rewards.flip(1).cumsum(1).flip(1) * validf
        return masked_whiten(returns, valid) * validf


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE++-baseline advantages: the group-mean baseline, then whitened over the batch.

    A_i = r_i - mean_{j in group(i)} r_j          (`group_mean_advantages`)
    A_it = (A_i - mean(A)) / sqrt(var(A) + 1e-8)  every response token t of sample i

    mean and (population) variance over all masked tokens of the batch (each sample weighs by
    its length, as OpenRLHF whitens over action tokens). Hu 2025, "REINFORCE++", arXiv:
    2501.03262 (the "-baseline" variant for K > 1 samples per prompt): the group baseline
    removes the prompt's difficulty, the global normalisation keeps GRPO's per-group std out
    (small groups with near-equal rewards would otherwise get huge advantages). The KL term
    goes in the loss, not the reward, in this variant.

    Shapes: rewards (P, K) sequence rewards, K samples per prompt; mask (P·K, T) response tokens
    in the same sample order; returns (P·K, T), 0 where masked out, no gradient.
    """
    with torch.no_grad():
        valid = mask.bool()
        centred = group_mean_advantages(rewards).reshape(-1, 1).to(torch.float32)
        per_token = centred.expand(valid.shape) * valid
        return masked_whiten(per_token, valid) * valid


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward of responses near the budget.

    R_length(y) = 0                           |y| <= L_max - L_cache
                  ((L_max - L_cache) - |y|) / L_cache   L_max - L_cache < |y| <= L_max
                  -1                          |y| > L_max

    Yu et al. 2025, "DAPO", arXiv:2503.14476, eq. 13 (L_max = the response budget, L_cache =
    `buffer`): a graded penalty in the last `buffer` tokens instead of a cliff at truncation.

    Shapes: lengths (N,) response lengths in tokens; returns (N,) float32 penalties in [-1, 0].
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"buffer must be in (0, max_len={max_len}], got {buffer}")
    lengths = lengths.to(torch.float32)
    soft = ((max_len - buffer) - lengths) / buffer
    return torch.where(lengths > max_len, -1.0, soft.clamp(max=0.0))
