"""Supervised fine-tuning (negative log-likelihood) losses.

Pure functions over per-token log-probabilities of the target tokens (e.g. from
`alignlab.ops.gather_log_probs`); `mask` selects the tokens that carry loss.
"""

from __future__ import annotations

import torch

from alignlab.ops import masked_mean, masked_sum


def sft_nll_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean negative log-likelihood over the masked tokens.

    loss_b = -(1 / |M_b|) Σ_{t ∈ M_b} log π(y_{b,t} | x_b, y_{b,<t})

    Maximum-likelihood fine-tuning (e.g. Ouyang et al. 2022, arXiv:2203.02155, SFT stage).
    A row with no masked token gives 0 (not NaN).

    Shapes:
        token_logps: (B, T) log-probability of each target token.
        mask: (B, T) bool or {0, 1}, set on tokens that carry loss.
        returns: (B,) per-example mean NLL.
    """
    return masked_mean(-token_logps, mask, dim=-1)


def token_nll_sum(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the negative log-likelihood over all masked tokens of the batch.

    loss = -Σ_b Σ_{t ∈ M_b} log π(y_{b,t} | x_b, y_{b,<t})

    The caller divides by the global number of loss tokens (across gradient-accumulation steps
    and data-parallel ranks), which makes the gradient the per-token mean over the whole
    effective batch rather than a mean of per-micro-batch means.

    Shapes:
        token_logps: (B, T) log-probability of each target token.
        mask: (B, T) bool or {0, 1}.
        returns: () scalar sum.
    """
    return masked_sum(-token_logps, mask)
