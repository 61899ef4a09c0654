"""The few tensor helpers shared by losses, recipes and evaluation.

Conventions: `mask` tensors are bool or {0, 1} floats of the same shape as the values they
select; log-probabilities are natural-log, float32.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

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


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp over the last dim, overwriting `logits` instead of allocating a
    temporary of its size (the same max-shift, so the same value)."""
    peak = logits.amax(-1, keepdim=True)
    peak.masked_fill_(peak.isinf(), 0.0)  # as torch.logsumexp: rows of -inf stay -inf
    return logits.sub_(peak).exp_().sum(-1).log_().add_(peak.squeeze(-1))


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
        weight_grad_sink: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        weight_c = weight.to(dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        logps = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        lse = torch.empty_like(logps)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = (hidden[rows].to(dtype) @ weight_c.T).to(acc)  # (C, V)
            picked = logits.gather(-1, labels[rows, None]).squeeze(-1)
            lse[rows] = _logsumexp_(logits)
            logps[rows] = picked - lse[rows]
            del logits  # before the next chunk's matmul allocates its own
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_size = chunk_size
        ctx.dtype = dtype
        ctx.sink = weight_grad_sink
        return logps

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_logps: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, labels, lse = ctx.saved_tensors
        dtype = ctx.dtype
        weight_c = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        wants_weight = ctx.needs_input_grad[1] or ctx.sink is not None
        grad_weight = torch.zeros_like(weight, dtype=lse.dtype) if wants_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            hidden_c = hidden[rows].to(dtype)
            logits = (hidden_c @ weight_c.T).to(lse.dtype)  # (C, V)
            # d logp / d logits = onehot(label) - softmax(logits), scaled by the incoming grad;
            # computed in the logits' own buffer: a second (C, V) tensor is the op's largest cost
            grad_logits = logits.sub_(lse[rows, None]).exp_().neg_()
            grad_logits.scatter_add_(-1, labels[rows, None], torch.ones_like(grad_logits[:, :1]))
            grad_logits.mul_(grad_logps[rows, None])
            grad_logits = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ weight_c).to(hidden.dtype)
            if grad_weight is not None and grad_logits.dtype == grad_weight.dtype:
                grad_weight.addmm_(grad_logits.T, hidden_c)  # no (V, H) temporary
            elif grad_weight is not None:  # low-precision chunks, float32 accumulation
                grad_weight += (grad_logits.T @ hidden_c).to(grad_weight.dtype)
            del logits, grad_logits  # before the next chunk's matmul allocates its own
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.sink is not None:
            ctx.sink.append(grad_weight)
            grad_weight = None
        return grad_hidden, grad_weight, None, None, None


CHUNK_LOGITS = 2**25
"""Most logits one chunk of `linear_log_probs` holds (128 MiB in float32): 1,024 rows of a
32k vocabulary, 220 of Qwen's 152k, whose 1,024-row chunk would be 600 MiB."""


def linear_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    weight_grad_sink: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[label] per row, computed chunk by chunk.

    hidden: (N, H) final hidden states; weight: (V, H) output projection (lm_head);
    labels: (N,) token ids, all valid. Returns float32 (N,) (float64 for float64 inputs).
    A chunk has `chunk_size` rows, fewer where that would exceed CHUNK_LOGITS logits, so
    the peak extra memory is one (rows, V) chunk plus, in backward, the (V, H) weight gradient,
    instead of (N, V); gradients flow to `hidden` and `weight`. With `weight_grad_sink`, a
    list, backward appends the weight's gradient to it instead (for a caller that passes a
    detached weight and delivers the gradient itself, as a tied embedding's lookup does).
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0.0 * weight.sum()
    rows = max(1, min(chunk_size, CHUNK_LOGITS // weight.shape[0]))
    return _LinearLogProbs.apply(hidden, weight, labels, rows, weight_grad_sink)


_REBUILDING = contextvars.ContextVar("rebuilding_saved_tensors", default=False)


@contextlib.contextmanager
def rebuilding_saved_tensors() -> Iterator[None]:
    """A forward run again only to rebuild the tensors its backward needs (a checkpointed
    layer's recomputation), whose output is thrown away: inside, `swiglu_mlp` skips its down
    projection, a quarter of a Llama layer's compute, and returns zeros. Only for code whose
    SwiGLU output feeds nothing that saves tensors (the Llama family's residual add)."""
    token = _REBUILDING.set(True)
    try:
        yield
    finally:
        _REBUILDING.reset(token)


class _SwiGLUMLP(torch.autograd.Function):
    """down(silu(gate(x)) * up(x)) keeping only x, gate(x) and up(x) for backward.

    Autograd through the plain module also keeps silu(gate(x)) and the product (the down
    projection's input): two more (tokens x intermediate) tensors per layer, a third of a
    Llama layer's activations. Backward recomputes both from gate(x) and up(x) with the same
    kernels (silu, silu_backward), so the gradients are autograd's.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        w_gate: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
    ) -> torch.Tensor:
        dtype = _compute_dtype(x)
        x_c = x.to(dtype)
        gate = x_c @ w_gate.to(dtype).T
        up = x_c @ w_up.to(dtype).T
        if _REBUILDING.get():
            out = x_c.new_zeros(*x_c.shape[:-1], w_down.shape[0])
        else:
            out = (torch.nn.functional.silu(gate) * up) @ w_down.to(dtype).T
        ctx.save_for_backward(x_c, gate, up, w_gate, w_up, w_down)
        ctx.dtype, ctx.x_dtype, ctx.x_shape = dtype, x.dtype, x.shape
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x_c, gate, up, w_gate, w_up, w_down = ctx.saved_tensors
        dtype = ctx.dtype
        x_c = x_c.reshape(-1, x_c.shape[-1])
        gate, up = gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1])
        grad_out = grad_out.reshape(-1, grad_out.shape[-1]).to(dtype)
        act = torch.nn.functional.silu(gate)
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad
        grad_down = (grad_out.T @ (act * up)).to(w_down.dtype) if need_down else None
        grad_hidden = grad_out @ w_down.to(dtype)  # d loss / d (act * up)
        grad_up = grad_hidden * act
        del act
        grad_gate = torch.ops.aten.silu_backward(grad_hidden.mul_(up), gate)
        del grad_hidden
        grad_x = None
        if need_x:
            # summed in x's dtype, as autograd sums the two projections' input gradients
            grad_x = (grad_gate @ w_gate.to(dtype)).to(ctx.x_dtype)
            grad_x += (grad_up @ w_up.to(dtype)).to(ctx.x_dtype)
            grad_x = grad_x.reshape(ctx.x_shape)
        grad_w_gate = (grad_gate.T @ x_c).to(w_gate.dtype) if need_gate else None
        grad_w_up = (grad_up.T @ x_c).to(w_up.dtype) if need_up else None
        return grad_x, grad_w_gate, grad_w_up, grad_down


def swiglu_mlp(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
) -> torch.Tensor:
    """The Llama MLP, down(silu(gate(x)) * up(x)), for bias-free projections with weights
    (I, H), (I, H), (H, I); x: (..., H). Same values and gradients as the module, with two
    (tokens x I) activations fewer kept for backward. Follows autocast like the module."""
    return _SwiGLUMLP.apply(x, w_gate, w_up, w_down)
