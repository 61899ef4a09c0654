"""Preference-optimisation losses (offline, from pairs, ranks or binary labels).

Conventions. `*_logps` are *summed* log-probabilities of a completion given its prompt, shape
(B,); `*_mean_logps` are the same sums divided by the completion length (mean token log-prob).
Which one a recipe passes is the recipe's choice; the losses apply the formula to what they get.
Implicit rewards returned alongside losses are detached (for logging only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_HALF = -math.log(2.0)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, accurate over the whole range (Mächler 2012, "Accurately
    Computing log(1 - exp(-|a|))").

    Uses log(-expm1(x)) for x > -log 2 and log1p(-exp(x)) otherwise; each branch is evaluated
    on inputs clamped to its own half so that neither produces inf/NaN gradients for the
    entries it does not serve. x = 0 gives -inf (probability one has infinite odds).
    """
    near_zero = x > _LOG_HALF
    upper = torch.log(-torch.expm1(torch.clamp(x, min=_LOG_HALF)))
    lower = torch.log1p(-torch.exp(torch.clamp(x, max=_LOG_HALF)))
    return torch.where(near_zero, upper, lower)


def _logratio_margin(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """h = (π_w - ref_w) - (π_l - ref_l), the DPO/IPO log-likelihood-ratio margin, (B,)."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def _implicit_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """β(π - ref) for chosen and rejected, detached, each (B,)."""
    chosen = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return chosen, rejected


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization loss.

    h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))
    loss = -log σ(β h)

    Rafailov et al. 2023, arXiv:2305.18290, eq. 7.

    Shapes:
        policy_chosen_logps: (B,) summed log-probs of the chosen completion under the policy.
        policy_rejected_logps: (B,) summed log-probs of the rejected completion under the policy.
        ref_chosen_logps: (B,) same under the frozen reference model.
        ref_rejected_logps: (B,) same under the frozen reference model.
        returns: (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are the
            implicit rewards β(log π - log π_ref), detached.
    """
    h = _logratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    chosen_rewards, rejected_rewards = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return -F.logsigmoid(beta * h), chosen_rewards, rejected_rewards


def cdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conservative DPO: the DPO loss of the pair, and with weight ε of the flipped pair.

    loss = (1 - ε) DPO(y_w, y_l) + ε DPO(y_l, y_w) = -(1 - ε) log σ(β h) - ε log σ(-β h)

    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO" (technical
    note, no arXiv id): ε = `label_smoothing`, the probability that a label is flipped.
    Shapes and rewards as `dpo_loss`.
    """
    kept, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    flipped, _, _ = dpo_loss(
        policy_rejected_logps, policy_chosen_logps, ref_rejected_logps, ref_chosen_logps, beta
    )
    return (
        (1.0 - label_smoothing) * kept + label_smoothing * flipped,
        chosen_rewards,
        rejected_rewards,
    )


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity Preference Optimisation loss.

    h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))
    loss = (h - 1 / (2β))²

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv:2310.12036, sec. 5 (β plays the role of the paper's τ). The paper
    uses summed log-probs; TRL's implementation averages per token. This function applies the
    formula to whatever log-probs it is given: the recipe decides (sum or mean).

    Shapes:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps:
            (B,) log-probs of the completions (summed or length-averaged, see above).
        returns: (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are
            β(log π - log π_ref), detached.
    """
    h = _logratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    chosen_rewards, rejected_rewards = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return losses, chosen_rewards, rejected_rewards


def slic_loss(
    policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, delta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SLiC-HF rank-calibration loss (hinge on the log-likelihood margin).

    loss = max(0, δ - log π(y_w) + log π(y_l))

    Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arXiv:2305.10425 (calibration loss). The regularisation term of the SLiC-HF objective
    (-λ log π(y_ref), the NLL of a reference/SFT target) is added by the recipe.

    Shapes:
        policy_chosen_logps: (B,) summed log-probs of the chosen completion.
        policy_rejected_logps: (B,) summed log-probs of the rejected completion.
        returns: (losses (B,), chosen (B,), rejected (B,)): the per-example hinge loss and the
            log-likelihoods it ranks by, detached.
    """
    losses = torch.clamp(delta - policy_chosen_logps + policy_rejected_logps, min=0.0)
    return losses, policy_chosen_logps.detach(), policy_rejected_logps.detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_estimate: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kahneman-Tversky Optimisation loss on unpaired binary feedback.

    r = log π(y) - log π_ref(y);  z0 = max(0, KL_estimate), detached
    loss = λ_D (1 - σ(β (r - z0)))   if y is desirable
    loss = λ_U (1 - σ(β (z0 - r)))   if y is undesirable

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv:2402.01306 (L = E[λ_y - v(x, y)]). The reference point z0 is a batch estimate
    of KL(π || π_ref) (in the paper and TRL: the mean of log π - log π_ref on mismatched
    prompt/completion pairs), computed by the caller; here it is clamped at 0 and receives no
    gradient.

    Shapes:
        policy_logps: (B,) summed log-probs of the completion under the policy.
        ref_logps: (B,) same under the reference model.
        desirable: (B,) bool, True for desirable (thumbs-up) examples.
        kl_estimate: () tensor or float (anything broadcastable to (B,)).
        returns: (losses (B,), rewards (B,)); rewards are the implicit rewards β r, detached.
    """
    logratio = policy_logps - ref_logps
    if isinstance(kl_estimate, torch.Tensor):
        z0 = kl_estimate.detach().clamp(min=0.0)
    else:
        z0 = max(float(kl_estimate), 0.0)
    desirable_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (logratio - z0)))
    undesirable_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratio)))
    losses = torch.where(desirable.bool(), desirable_losses, undesirable_losses)
    return losses, beta * logratio.detach()


def orpo_odds_ratio_loss(
    chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO odds-ratio loss on length-averaged log-probs.

    log odds(y) = m - log(1 - e^m),  m = mean token log-prob of y (so P(y) = e^m)
    loss = -log σ(log odds(y_w) - log odds(y_l))

    Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference
    Model", arXiv:2403.07691. The recipe adds λ times this to the chosen NLL
    (L = L_SFT + λ L_OR). log(1 - e^m) is computed stably (log1mexp); m must be < 0 (m = 0
    means probability one and infinite odds).

    Shapes:
        chosen_mean_logps: (B,) mean token log-prob of the chosen completion.
        rejected_mean_logps: (B,) mean token log-prob of the rejected completion.
        returns: (losses (B,), chosen (B,), rejected (B,)): the per-example loss and the mean
            log-probs it compares, detached.
    """
    log_odds_chosen = chosen_mean_logps - _log1mexp(chosen_mean_logps)
    log_odds_rejected = rejected_mean_logps - _log1mexp(rejected_mean_logps)
    losses = -F.logsigmoid(log_odds_chosen - log_odds_rejected)
    return losses, chosen_mean_logps.detach(), rejected_mean_logps.detach()


def simpo_loss(
    chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, beta: float, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simple Preference Optimisation loss (reference-free, length-normalised).

    loss = -log σ(β (m_w - m_l) - γ)

    Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", arXiv:2405.14734. γ is the target reward margin itself (TRL's
    `simpo_gamma`; the authors' code configures `gamma_beta_ratio` = γ / β instead). The implicit reward is β m.

    Shapes:
        chosen_mean_logps: (B,) mean token log-prob of the chosen completion.
        rejected_mean_logps: (B,) mean token log-prob of the rejected completion.
        returns: (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are the
            implicit rewards β m, detached.
    """
    losses = -F.logsigmoid(beta * (chosen_mean_logps - rejected_mean_logps) - gamma)
    return losses, beta * chosen_mean_logps.detach(), beta * rejected_mean_logps.detach()


def rrhf_loss(logps: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """RRHF ranking loss over K scored responses per prompt.

    loss = Σ_{i, j : s_i < s_j} max(0, p_i - p_j)

    Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback
    without tears", arXiv:2304.05302 (L_rank). Ties (s_i = s_j) contribute nothing.
    The recipe adds the NLL of the best-scored response (L_ft).

    Shapes:
        logps: (B, K) length-normalised log-probs p_i of the K responses.
        scores: (B, K) reward scores s_i (higher is better).
        returns: (B,) per-example loss (summed over pairs, not averaged).
    """
    # diff[b, i, j] = p_i - p_j; worse[b, i, j] = s_i < s_j (response i ranked below j).
    diff = logps.unsqueeze(-1) - logps.unsqueeze(-2)
    worse = scores.unsqueeze(-1) < scores.unsqueeze(-2)
    return (torch.clamp(diff, min=0.0) * worse.to(diff.dtype)).sum(dim=(-2, -1))
