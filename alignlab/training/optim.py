"""AdamW (or plain SGD) with decoupled weight decay and a warm-up + decay learning-rate
schedule."""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn

from alignlab.config import ConfigError, TrainConfig

FUSED_DEVICES = ("cpu", "cuda")
"""Devices with a fused AdamW kernel that alignlab is tested on."""


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD, or `AdamWInBackward`) over trainable parameters; norms and biases (1-D
    tensors) get no weight decay."""
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
    adamw = torch.optim.AdamW
    if cfg.step_in_backward:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ConfigError(
                "train.step_in_backward=true runs in one process: FSDP2 reduces the "
                "gradients after backward"
            )
        adamw = AdamWInBackward
    return adamw(
        groups,
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        fused=fused or None,
    )


def refuse_step_in_backward(cfg: TrainConfig) -> None:
    """For recipes that sum gradients over several backwards per update (RL updates): called
    from their config checks."""
    if cfg.step_in_backward:
        raise ConfigError(
            "train.step_in_backward=true is for sft, dpo, kto, rrhf and rm: this recipe sums "
            "gradients over several micro-batches per update"
        )


class AdamWInBackward(torch.optim.AdamW):
    """AdamW whose update of each parameter runs in backward, the moment its gradient is
    complete (a post-accumulate-grad hook), after which that gradient is freed: a step never
    holds all the gradients, 4 bytes x parameters less at its peak. The fused update of
    LOMO (Lv et al. 2023, arXiv:2306.09782) and torchtune's `optimizer_in_bwd`, with AdamW.

    The update of each tensor is AdamW's own (`super().step()` sees one gradient at a time),
    and so is the state dict, so a checkpoint resumes with either optimizer. `step()`, called
    once per optimizer step, updates what still holds a gradient (none, after a backward) and
    closes the step; `grad_norm` is then the norm of the gradients it spent. A tensor whose gradient is not finite is left as it is (AdamW's loop skips
    the whole step; here the others are already updated) and `grad_norm` is then not finite.
    One backward per optimizer step: a second gradient for a tensor in the same step is a
    recipe that accumulates, refused at once.
    """

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._updated: set[int] = set()
        self._squares: list[torch.Tensor] = []
        self.grad_norm = torch.tensor(0.0)
        # the hooks hold the optimizer weakly: a model trained again with another optimizer
        # (a later stage in one process) is not also stepped by this one once it is dropped
        update = weakref.WeakMethod(self._update)

        def hook(param: torch.Tensor) -> None:
            if (method := update()) is not None:
                method(param)

        for group in self.param_groups:
            for param in group["params"]:
                param.register_post_accumulate_grad_hook(hook)

    @torch.no_grad()
    def _update(self, param: torch.Tensor) -> None:
        if id(param) in self._updated:
            raise RuntimeError(
                "train.step_in_backward=true: a second backward in one optimizer step; this "
                "recipe accumulates gradients and needs train.step_in_backward=false"
            )
        self._updated.add(id(param))
        square = torch.linalg.vector_norm(param.grad, dtype=torch.float32).square()
        self._squares.append(square)
        if torch.isfinite(square):
            super().step()  # only `param` holds a gradient: the others are spent or to come
        param.grad = None

    def step(self, closure: Any = None) -> None:
        # gradients set outside backward still get AdamW's step (torch.distributed.checkpoint
        # initialises the state of an optimizer it loads that way); backward's are spent
        super().step(closure)
        squares = self._squares
        self.grad_norm = torch.stack(squares).sum().sqrt() if squares else torch.tensor(0.0)
        self._updated.clear()
        self._squares = []


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
