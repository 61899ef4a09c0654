"""AdamW (or plain SGD) with decoupled weight decay and a warm-up + decay learning-rate
schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from alignlab.config import TrainConfig

FUSED_DEVICES = ("cpu", "cuda")
"""Devices with a fused AdamW kernel that alignlab is tested on."""


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD) over trainable parameters; norms and biases (1-D tensors) get no weight
    decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        # SGD's L2 term lr·wd·w is exactly AdamW's decoupled decay, so the groups carry over
        return torch.optim.SGD(groups, lr=cfg.lr)
    # The fused kernel updates each tensor in place. torch's default on CPU, the per-tensor
    # loop, allocates two temporaries the size of the largest parameter (a 152k-token
    # embedding: 1 GB at 0.5B), and foreach, the default on CUDA, the size of all of them.
    fused = all(p.device.type in FUSED_DEVICES for p in decay + no_decay)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        fused=fused or None,
    )


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    Linear warm-up over the first `warmup` steps (the first step already gets 1/warmup of the
    peak, not 0), then cosine or linear decay to `min_lr_ratio` at the last step.
    """
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(progress, 1.0)
    if cfg.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg)
    )
