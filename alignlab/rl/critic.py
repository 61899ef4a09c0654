"""The PPO critic: old values, the value update, checkpoints.

    critic = Critic(cfg.critic, cfg.model, cfg.train, tokenizer, runtime, total_updates,
                    resume_from, reward=cfg.rl.reward)   # value model (resumed), its AdamW
    old_values = critic.values(exp.rollout, batch_size)  # (N, T) V_old at response positions
    stats = critic.update(exp.rollout, old_values, returns, sizes, generator)
    run.end_step(step, record, extra_files=critic.checkpoint_files)
    critic.save(output_dir / "critic")             # plain HF sequence-classification folder

The model is `alignlab.models.value` (a reward-model architecture whose head reads every
position), all weights trained (LoRA is for the policy only), in `model.dtype`, with
`model.gradient_checkpointing`, FSDP2-sharded like the policy under torchrun.

`update`: the policy's mini-batch loop (`alignlab.rl.minibatch.minibatch_update`: its sizes,
its own shuffle, the gradient clipped at `train.max_grad_norm`), the per-token loss
`alignlab.losses.policy.clipped_value_token_losses` averaged over the mini-batch's response
tokens, AdamW at `critic.lr` with the policy's schedule, weight decay and betas. Its diagnostics are measured
on V_old before the update: value_error = mean (V_old - R)², explained_variance =
1 - Var(R - V_old) / Var(R), over all response tokens of all processes.

Checkpoints: the full weights, optimizer and scheduler are saved as `critic.pt` inside every
step checkpoint (`checkpoint_files`, written atomically with it), and restored from
`resume_from`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from alignlab.config import LoraConfig, ModelConfig, TrainConfig, option
from alignlab.losses.policy import clipped_value_token_losses, token_mean
from alignlab.models.value import HEAD_INITS, TokenValues, load_value_model
from alignlab.ops import masked_sum
from alignlab.rl.minibatch import MicroBatch, UpdateSizes, minibatch_update
from alignlab.rl.rollout import Rollout, token_logps
from alignlab.training import distributed
from alignlab.training.checkpoint import (
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
    save_reward_folder,
)
from alignlab.training.optim import build_optimizer, build_scheduler

CHECKPOINT_FILE = "critic.pt"


@dataclasses.dataclass
class CriticConfig:
    """The value model V(s_t) of PPO: all weights trained, its own AdamW."""

    path: str = option(
        "",
        "RM folder or causal LM; empty = rl.reward if it is one RM folder, else model.path",
        kind="model",
    )
    init: str = option(
        "auto",
        "value head: auto keeps an RM's head, zeroes a new one; zero; normal N(0, 1/(H+1))",
        choices=HEAD_INITS,
    )
    lr: float = option(
        1e-5, "critic peak learning rate (policy's schedule)", min=0, min_exclusive=True
    )
    value_clip: float = option(
        0.2, "clip V - V_old to [-c, c] in the value loss (PPO2 style); 0 = no clipping", min=0
    )

    def source(self, reward: str, model_path: str) -> str:
        """The folder or hub id the critic starts from (see `path`)."""
        if self.path:
            return self.path
        one_reward_model = "," not in reward and Path(reward).is_dir()
        return reward if one_reward_model else model_path


class Critic:
    """The value model, its optimizer and schedule."""

    def __init__(
        self,
        cfg: CriticConfig,
        model_cfg: ModelConfig,
        train: TrainConfig,
        tokenizer: Any,
        runtime: distributed.Runtime,
        total_updates: int,
        resume_from: Path | None,
        reward: str,
    ) -> None:
        self.cfg, self.tokenizer, self.runtime = cfg, tokenizer, runtime
        self.mixed_precision = train.mixed_precision
        path = cfg.source(reward, model_cfg.path)
        critic_cfg = dataclasses.replace(
            model_cfg,
            path=path,
            revision=model_cfg.revision if path == model_cfg.path else "",
            lora=LoraConfig(enabled=False),
        )
        # A new head is drawn from the global RNG, which a resumed run has just restored.
        with torch.random.fork_rng(devices=[]):
            self.model = load_value_model(
                critic_cfg, tokenizer, cfg.init, device=runtime.device, seed=train.seed
            )
        state = None
        if resume_from is not None:
            state = torch.load(
                resume_from / CHECKPOINT_FILE, map_location="cpu", weights_only=False
            )
            self.model.load_state_dict(state["model"])
        self.module = TokenValues(self.model)
        if runtime.distributed:
            distributed.shard_model(self.module, self.model, runtime)
        critic_train = dataclasses.replace(train, lr=cfg.lr)
        self.optimizer = build_optimizer(self.module, critic_train)
        self.scheduler = build_scheduler(self.optimizer, total_updates, critic_train)
        if state is not None:
            load_full_optimizer_state(self.module, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        if runtime.is_main:
            print(f"critic: {path} (value head: {cfg.init})")

    def values(self, roll: Rollout, batch_size: int) -> torch.Tensor:
        """(N, T) float32 CPU values V_old at the response positions (eval mode, no grad)."""
        return token_logps(self.module, roll, batch_size, self.mixed_precision)

    def update(
        self,
        roll: Rollout,
        old_values: torch.Tensor,
        returns: torch.Tensor,
        sizes: UpdateSizes,
        generator: torch.Generator,
    ) -> dict[str, float]:
        """Clipped value-loss mini-batch updates towards `returns` (N, T); diagnostics."""
        clip = self.cfg.value_clip or math.inf
        diagnostics = _value_diagnostics(old_values, returns, roll.mask, self.runtime)

        def value_losses(mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            values, old, target = mb.forward(self.module), mb.take(old_values), mb.take(returns)
            losses = clipped_value_token_losses(values, old, target, clip)
            clipped = old + (values.detach() - old).clamp(-clip, clip)
            active = (clipped - target) ** 2 > (values.detach() - target) ** 2
            return losses, {"value_clip_fraction": active.float()}

        stats = minibatch_update(
            self.module, self.optimizer, self.scheduler, roll, value_losses, token_mean,
            sizes, self.runtime, generator,
        )  # fmt: skip
        return {
            "value_loss": stats["loss"],
            "value_clip_fraction": stats["value_clip_fraction"],
            **diagnostics,
            "critic_grad_norm": stats["grad_norm"],
            "critic_lr": stats["lr"],
            "critic_update_s": stats["update_s"],
        }

    def checkpoint_files(self) -> dict[str, Any]:
        """{critic.pt: full weights, optimizer, scheduler} for a step checkpoint (collective)."""
        runtime = self.runtime
        state = {
            "model": full_model_state(self.model, runtime),
            "optimizer": full_optimizer_state(self.module, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
        }
        return {CHECKPOINT_FILE: state}

    def save(self, target: str | Path) -> Path:
        """The critic as a plain HF sequence-classification folder (collective)."""
        return save_reward_folder(target, self.model, self.tokenizer, self.runtime)


def _value_diagnostics(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    runtime: distributed.Runtime,
) -> dict[str, float]:
    """value_error, explained_variance, returns_mean, values_mean over all processes."""
    errors = returns - values
    parts = [
        float(mask.sum()),
        masked_sum(returns.double(), mask).item(),
        masked_sum(returns.double() ** 2, mask).item(),
        masked_sum(errors.double(), mask).item(),
        masked_sum(errors.double() ** 2, mask).item(),
        masked_sum(values.double(), mask).item(),
    ]
    count, return_sum, return_sq, error_sum, error_sq, value_sum = distributed.sum_floats(
        parts, runtime
    )
    count = max(count, 1.0)
    return_var = return_sq / count - (return_sum / count) ** 2
    error_var = error_sq / count - (error_sum / count) ** 2
    return {
        "value_error": error_sq / count,
        "explained_variance": 1.0 - error_var / return_var if return_var > 1e-12 else 0.0,
        "returns_mean": return_sum / count,
        "values_mean": value_sum / count,
    }
