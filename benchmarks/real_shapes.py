"""Real small-LM shapes for the SFT and DPO benchmarks, and the arithmetic around them.

`qwen0.5b` and `qwen1.5b` are Qwen2.5-0.5B / -1.5B-like Llama configs: same hidden size,
layers, heads / KV heads, intermediate size and vocabulary (151,936), tied embeddings
(494M and 1.54B parameters; Llama has no q/k/v biases, so ~0.1% fewer than Qwen2).
At these shapes the decoder body, not the output projection, holds most of the FLOPs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

QWEN_VOCAB = 151936
QWEN_05B = {
    "hidden_size": 896,
    "num_layers": 24,
    "num_heads": 14,
    "num_kv_heads": 2,
    "intermediate_size": 4864,
}
QWEN_15B = {
    "hidden_size": 1536,
    "num_layers": 28,
    "num_heads": 12,
    "num_kv_heads": 2,
    "intermediate_size": 8960,
}
GB = 2**30


def body_params(body: dict) -> int:
    """Parameters of the decoder layers and final norm (the tied embedding not included)."""
    h, inter = body["hidden_size"], body["intermediate_size"]
    kv_width = h // body["num_heads"] * body.get("num_kv_heads", 2)  # tiny_llama_config: 2
    attention = 2 * h * h + 2 * h * kv_width  # q, o; k, v
    return body["num_layers"] * (attention + 3 * h * inter + 2 * h) + h


def num_params(body: dict, vocab: int) -> int:
    """All parameters of the tied-embedding model."""
    return body_params(body) + vocab * body["hidden_size"]


def model_flops(body: dict, vocab: int, tokens: int, seq: int) -> float:
    """FLOPs of one training step: 6 x (body + output projection) x tokens, plus attention
    (QK^T and AV over the whole sequence, 4 x seq x hidden per token and layer forward, x3
    with backward; causal masking not discounted)."""
    h = body["hidden_size"]
    attention = body["num_layers"] * 4 * seq * h
    return 6 * (body_params(body) + h * vocab) * tokens + 3 * attention * tokens


def training_state_gb(body: dict, vocab: int, weight_bytes: int, copies: int = 0) -> float:
    """Weights + gradients + AdamW's two moments (4 tensors per parameter), plus `copies`
    frozen copies of the weights (a DPO reference model)."""
    return num_params(body, vocab) * weight_bytes * (4 + copies) / GB


def ram_gb() -> float:
    text = Path("/proc/meminfo").read_text()
    return int(text.split("MemTotal:")[1].split()[0]) * 1024 / GB


def too_big(body: dict, vocab: int, weight_bytes: int, copies: int = 0) -> str | None:
    """Why a run at this shape cannot fit in this machine's RAM, or None. Activations and the
    allocator's working space come on top of the training state: at 0.5B in fp32 they were
    about half of it again, so a run needs ~1.5x the state."""
    need = 1.5 * training_state_gb(body, vocab, weight_bytes, copies)
    have = ram_gb()
    if need <= have:
        return None
    return (
        f"skipped: {num_params(body, vocab) / 1e9:.2f}B parameters need ~{need:.0f} GB "
        f"(weights, grads, AdamW state{', reference' if copies else ''}, activations), "
        f"this machine has {have:.0f} GB"
    )


def matmul_flops(size: int = 2048, reps: int = 5) -> float:
    """fp32 matmul throughput of this machine now (FLOP/s)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - start)


def load_average() -> float:
    """The 1-minute load average (2 cores: above ~2 means others were running)."""
    return os.getloadavg()[0]
