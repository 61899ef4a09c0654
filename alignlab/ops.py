"""The few tensor helpers shared by losses, recipes and evaluation.

Conventions: `mask` tensors are bool or {0, 1} floats of the same shape as the values they
select; log-probabilities are natural-log, float32.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Label value for positions that carry no loss (prompt tokens, padding)."""


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is set, over `dim` (all dims when None)."""
    values = values * mask.to(values.dtype)
    return values.sum() if dim is None else values.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is set; 0 (not NaN) where nothing is selected."""
    count = mask.to(values.dtype)
    count = count.sum() if dim is None else count.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise `values` to unit variance (and zero mean if `shift_mean`) over masked entries."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


def gather_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] for each position, without keeping a (…, V) log-softmax.

    logits: (..., V); labels: (...) int, IGNORE_INDEX allowed (gives 0).
    Returns float32 (...). Uses logit[label] - logsumexp(logits), which needs one (…, V)
    temporary fewer than `log_softmax(...).gather(...)`.
    """
    safe_labels = labels.clamp(min=0)
    logits = logits.float()
    picked = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return logps.masked_fill(labels == IGNORE_INDEX, 0.0)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with next-token logits: position t predicts token t+1. (B, T) -> (B, T)."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


class _LinearLogProbs(torch.autograd.Function):
    """log p(label) through an output projection, in row chunks, never storing (N, V).

    Forward keeps only the per-row logsumexp; backward recomputes each chunk's logits. This is
    the memory trick of fused linear cross-entropy kernels (e.g. Liger-Kernel, Hsu et al. 2024,
    arXiv:2410.10989), written in plain torch so it runs on any device.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        chunk_size: int,
    ) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        weight_c = weight.to(dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        logps = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        lse = torch.empty_like(logps)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = (hidden[rows].to(dtype) @ weight_c.T).to(acc)  # (C, V)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logps[rows] = logits.gather(-1, labels[rows, None]).squeeze(-1) - lse[rows]
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_size = chunk_size
        ctx.dtype = dtype
        return logps

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_logps: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, labels, lse = ctx.saved_tensors
        dtype = ctx.dtype
        weight_c = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=lse.dtype) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            hidden_c = hidden[rows].to(dtype)
            logits = (hidden_c @ weight_c.T).to(lse.dtype)  # (C, V)
            # d logp / d logits = onehot(label) - softmax(logits), scaled by the incoming grad.
            grad_logits = torch.exp(logits.sub_(lse[rows, None])).neg_()
            grad_logits.scatter_add_(-1, labels[rows, None], torch.ones_like(grad_logits[:, :1]))
            grad_logits.mul_(grad_logps[rows, None])
            grad_logits = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ weight_c).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ hidden_c).to(lse.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_log_probs(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[label] per row, computed chunk by chunk.

    hidden: (N, H) final hidden states; weight: (V, H) output projection (lm_head);
    labels: (N,) token ids, all valid. Returns float32 (N,) (float64 for float64 inputs). Peak extra memory is
    (chunk_size, V) instead of (N, V); gradients flow to `hidden` and `weight`.
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0.0 * weight.sum()
    return _LinearLogProbs.apply(hidden, weight, labels, chunk_size)
