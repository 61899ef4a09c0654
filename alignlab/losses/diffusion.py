"""Losses for aligning text-to-image diffusion models (ε-prediction, DDPM/DDIM schedulers).

Conventions. `eps_pred` and `eps` are the predicted and the true noise, (B, ...) (latents are
(B, C, H, W)); the *denoising error* of a sample is the mean over its non-batch dims of
(ε_θ - ε)², i.e. ‖ε - ε_θ‖² / D with D the number of latent elements: the papers write the
squared norm, their official code (and this module) the per-element mean, which only rescales
β-like coefficients by D. `logprob` tensors are log p_θ(x_{t-1} | x_t, c) of one DDIM step,
(B,) or (B, T) for T steps, averaged over latent elements as ddpo-pytorch does.
Metrics returned alongside losses are detached (for logging only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _left_broadcast(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """`values` (B, ...) with trailing singleton dims added up to `ndim`, so a per-sample
    quantity (B,) broadcasts against (B, C, H, W) or (B, T)."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def denoising_errors(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample denoising error e_i = mean_j (ε_θ - ε)²_ij over the non-batch dims, (B,).

    The summand of the DDPM "simple" loss (Ho et al. 2020, arXiv:2006.11239, eq. 14), as a
    mean over elements rather than a squared norm. Computed in at least float32: a bf16 sum
    over tens of thousands of latent elements would lose most of its digits.
    """
    dtype = torch.promote_types(eps_pred.dtype, torch.float32)
    diff = eps_pred.to(dtype) - eps.to(dtype)
    return diff.pow(2).flatten(1).mean(dim=1)


def denoising_loss(
    eps_pred: torch.Tensor, eps: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """DDPM simple loss: L = (1/B) Σ_i w_i e_i, e_i = mean_j (ε_θ - ε)²_ij (w_i = 1 if None).

    Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239, eq. 14.
    `weights` (B,), e.g. Min-SNR timestep weights or rewards, are constants and the sum is
    divided by B, not by Σ w (as diffusers' Min-SNR weighting and Lee et al.'s E[r · e]):
    the weights' scale is kept. Shapes: eps_pred, eps (B, ...); returns () scalar.
    """
    errors = denoising_errors(eps_pred, eps)
    if weights is None:
        return errors.mean()
    return (weights.detach().to(errors.dtype) * errors).mean()


def reward_weighted_loss(
    eps_pred: torch.Tensor,
    eps: torch.Tensor,
    rewards: torch.Tensor,
    pretrain_eps_pred: torch.Tensor | None = None,
    pretrain_eps: torch.Tensor | None = None,
    beta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reward-weighted denoising loss plus a pre-training denoising regulariser.

    L = E_{(x, z) ~ D_model}[r(x, z) e_θ(x, z)] + β E_{(x, z) ~ D_pre}[e_θ(x, z)]

    Lee et al. 2023, "Aligning Text-to-Image Models using Human Feedback", arXiv:2302.12192:
    their reward-weighted NLL with -log p_θ replaced by the denoising loss. e is the
    per-sample error of `denoising_errors` (a mean over elements, the paper's ‖ε - ε_θ‖² / D).
    Rewards are constants (no gradient to the reward model).

    Shapes:
        eps_pred, eps: (B, ...) on model-generated images (x, z) with their rewards.
        rewards: (B,) r(x, z).
        pretrain_eps_pred, pretrain_eps: (B', ...) on real pre-training pairs; both or neither.
        returns: (total, reward_term, pretrain_term), () scalars; pretrain_term is 0 (and
            adds nothing) without pre-training inputs. The two terms keep their gradients.
    """
    if (pretrain_eps_pred is None) != (pretrain_eps is None):
        raise ValueError("pass both pretrain_eps_pred and pretrain_eps, or neither")
    reward_term = denoising_loss(eps_pred, eps, weights=rewards)
    if pretrain_eps_pred is None:
        pretrain_term = reward_term.new_zeros(())
    else:
        pretrain_term = denoising_loss(pretrain_eps_pred, pretrain_eps)
    return reward_term + beta * pretrain_term, reward_term, pretrain_term


def diffusion_dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-DPO loss, as the official training script computes it.

    inside = -(β / 2) ((e_θ^w - e_ref^w) - (e_θ^l - e_ref^l))
    loss = -mean_i log σ(inside_i)

    Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization",
    arXiv:2311.12908, sec. 4 (final objective): -log σ(-β_p T ω(λ_t) (‖ε^w - ε_θ(x^w_t)‖² -
    ‖ε^w - ε_ref(x^w_t)‖² - (‖ε^l - ε_θ(x^l_t)‖² - ‖ε^l - ε_ref(x^l_t)‖²))). The code
    (SalesforceAIResearch/DiffusionDPO, train.py, `scale_term = -0.5 * args.beta_dpo`) uses
    per-element mean errors and folds T ω(λ_t) (constant ω) into `beta_dpo`, so
    β_p T ω = β / (2 D) for D latent elements; `beta` here is their `beta_dpo` (5000 in their
    SD1.5 and SDXL launchers). w and l must be noised with the same t and the same ε, as the
    script does; the reference errors are treated as constants.

    Shapes:
        model_err_w, model_err_l: (B,) per-sample errors (`denoising_errors`) of the policy on
            the preferred / dispreferred noised latents.
        ref_err_w, ref_err_l: (B,) same under the frozen reference.
        returns: (loss () scalar, implicit_acc () detached: fraction with inside > 0; a tie,
            as at model == reference, counts as wrong, as in the script).
    """
    model_diff = model_err_w - model_err_l
    ref_diff = (ref_err_w - ref_err_l).detach()
    inside = -0.5 * beta * (model_diff - ref_diff)
    implicit_acc = (inside.detach() > 0).to(inside.dtype).mean()
    return -F.logsigmoid(inside).mean(), implicit_acc


def gaussian_step_logprob(
    sample_prev: torch.Tensor, mean_prev: torch.Tensor, std: torch.Tensor | float
) -> torch.Tensor:
    """Log-density of one stochastic DDIM step, averaged (not summed) over elements.

    log p_θ(x_{t-1} | x_t, c) = (1/D) Σ_j [-(x_{t-1} - μ_θ)²_j / (2σ_t²) - log σ_t - log √(2π)]

    Black et al. 2023, "Training Diffusion Models with Reinforcement Learning" (DDPO),
    arXiv:2305.13301: the policy of the denoising MDP is the sampler step N(μ_θ(x_t, t, c),
    σ_t² I), with σ_t = η √((1 - ᾱ_{t-1})/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1}) (DDIM, η > 0). As
    ddpo-pytorch (ddim_with_logprob.py) this is the *mean* over the D non-batch elements: the
    true log-density is D times it, so a PPO ratio built from it is exp(log-ratio / D), the
    scale their default clip range (1e-4) applies to. The sample is data: no gradient to it.

    Shapes:
        sample_prev: (B, ...) x_{t-1} actually taken by the sampler.
        mean_prev: (B, ...) μ_θ(x_t, t, c) (with grad).
        std: σ_t > 0, a float, (B,) or anything broadcastable to sample_prev.
        returns: (B,) float32 or wider.
    """
    dtype = torch.promote_types(mean_prev.dtype, torch.float32)
    std = torch.as_tensor(std, dtype=dtype, device=mean_prev.device)
    std = _left_broadcast(std, mean_prev.ndim) if std.ndim else std
    diff = sample_prev.detach().to(dtype) - mean_prev.to(dtype)
    log_density = -diff.pow(2) / (2.0 * std.pow(2)) - torch.log(std) - _LOG_SQRT_2PI
    return log_density.flatten(1).mean(dim=1)


def ddpo_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    adv_clip_max: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DDPO_IS: the PPO clipped surrogate over denoising steps.

    ρ = exp(log p_θ - log p_old);  L = mean(max(-A ρ, -A clip(ρ, 1 - ε, 1 + ε)))

    Black et al. 2023, arXiv:2305.13301 (DDPO_IS with PPO clipping, after Schulman et al.
    2017, arXiv:1707.06347); every denoising step is an action with the final image's
    advantage. ddpo-pytorch (scripts/train.py) averages over the batch for one step at a time
    and accumulates the steps' gradients; with (B, T) inputs the mean over all entries is the
    same. `adv_clip_max` clamps A to [-c, c] first (their `train.adv_clip_max`, 5).

    Shapes:
        logprob: (B,) or (B, T) `gaussian_step_logprob` under the current policy (with grad).
        old_logprob: same shape, under the sampling policy (constant).
        advantages: (B,) per image (broadcast over steps) or logprob's shape, constant.
        returns: (loss (), approx_kl (), clipfrac ()); approx_kl = ½ mean((log p_θ - log
            p_old)²) and clipfrac = mean(|ρ - 1| > ε), both detached, as ddpo-pytorch logs.
    """
    advantages = _left_broadcast(advantages.detach(), logprob.ndim)
    if adv_clip_max is not None:
        advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    log_ratio = logprob - old_logprob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    approx_kl = 0.5 * log_ratio.detach().pow(2).mean()
    clipfrac = ((ratio.detach() - 1.0).abs() > clip_range).to(ratio.dtype).mean()
    return loss, approx_kl, clipfrac


def ddpo_sf_loss(logprob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """DDPO_SF: the REINFORCE (score-function) surrogate, L = -mean(A log p_θ).

    Black et al. 2023, arXiv:2305.13301: ∇J = E[Σ_t ∇ log p_θ(x_{t-1} | x_t, c) r(x_0, c)],
    here with an advantage for r and a mean over the T steps instead of the sum (a 1/T scale).
    Valid on freshly sampled trajectories only (one gradient step per sampling round).
    Shapes: logprob (B,) or (B, T) with grad; advantages (B,) or logprob's shape, constant;
    returns () scalar.
    """
    advantages = _left_broadcast(advantages.detach(), logprob.ndim)
    return -(advantages * logprob).mean()


def per_prompt_advantages(
    rewards: torch.Tensor, prompt_ids: torch.Tensor, min_count: int
) -> torch.Tensor:
    """Rewards standardised per prompt: A_i = (r_i - μ_p) / (σ_p + 1e-6) for i's prompt p.

    μ_p, σ_p are the mean and population std (ddof 0, as np.std) of the batch's rewards for
    prompt p when it has at least `min_count` of them, else of the whole batch. A simple form
    of ddpo-pytorch's PerPromptStatTracker (stat_tracking.py; Black et al. 2023,
    arXiv:2305.13301, per-prompt normalisation): theirs keeps a buffer of each prompt's last
    `buffer_size` rewards across epochs and counts those against `min_count`; this one sees
    only the current batch. Shapes: rewards (B,) float; prompt_ids (B,) int; returns (B,).
    """
    rewards = rewards.detach()
    advantages = (rewards - rewards.mean()) / (rewards.std(correction=0) + 1e-6)
    for prompt in prompt_ids.unique():
        rows = prompt_ids == prompt
        if int(rows.sum()) >= min_count:
            group = rewards[rows]
            advantages[rows] = (group - group.mean()) / (group.std(correction=0) + 1e-6)
    return advantages
