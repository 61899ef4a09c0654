"""The reference policy of the KL term: a frozen copy of a model (FSDP2-sharded under
torchrun), or the LoRA policy itself with its adapters disabled (no second copy)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from alignlab.config import LoraConfig, ModelConfig
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import is_peft, load_model
from alignlab.rl.config import RLReferenceConfig
from alignlab.rl.rollout import Rollout, token_logps
from alignlab.training import distributed


class RLReference:
    """Per-token reference log-probs: a frozen model, or the LoRA policy without adapters."""

    def __init__(
        self,
        cfg: RLReferenceConfig,
        model_cfg: ModelConfig,
        tokenizer: Any,
        runtime: distributed.Runtime,
        chunk_size: int,
        mixed_precision: str,
        load: Callable[[ModelConfig, torch.device], nn.Module] | None = None,
    ) -> None:
        """`load`: how to load the frozen copy (default `load_model`; a vision-language run
        passes its VLM loader)."""
        self.mode = cfg.mode
        self.mixed_precision = mixed_precision
        self.module: TokenLogProbs | None = None
        if self.mode == "model":
            ref_cfg = dataclasses.replace(
                model_cfg,
                path=cfg.path or model_cfg.path,
                gradient_checkpointing=False,
                lora=LoraConfig(enabled=False),
            )
            if load is None:
                model = load_model(ref_cfg, tokenizer, device=runtime.device)
            else:
                model = load(ref_cfg, runtime.device)
            model.requires_grad_(False)
            self.module = TokenLogProbs(model, chunk_size=chunk_size).eval()
            if runtime.distributed:
                distributed.shard_model(self.module, model, runtime)

    def attach(self, policy: TokenLogProbs) -> None:
        if self.mode == "adapter":
            if not is_peft(policy.model):
                raise RuntimeError("reference.mode=adapter needs a LoRA (peft) policy")
            self.module = policy

    def __call__(self, roll: Rollout, batch_size: int) -> torch.Tensor:
        """(N, T) float32 CPU reference log-probs of the rollout's response tokens."""
        if self.mode == "adapter":
            with self.module.model.disable_adapter():
                return token_logps(self.module, roll, batch_size, self.mixed_precision)
        return token_logps(self.module, roll, batch_size, self.mixed_precision)
