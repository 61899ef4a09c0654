"""The PPO critic on top of an `RLSession`: old values, the value update, checkpoints.

    critic = Critic(cfg.critic, session)           # value model (resumed), its own AdamW
    session.checkpoint_extras = critic.checkpoint_files
    old_values = critic.values(exp.rollout)        # (N, T) V_old at the response positions
    stats = critic.update(step, exp.rollout, old_values, returns)
    critic.save(output_dir / "critic")             # plain HF sequence-classification folder

The model is `alignlab.models.value` (a reward-model architecture whose head reads every
position), all weights trained (LoRA is for the policy only), in `model.dtype`, with
`model.gradient_checkpointing`, FSDP2-sharded like the policy under torchrun.

`update`: `rl.num_iterations` passes over the rollout in shuffled mini-batches of
`rl.mini_batch_size` samples (the policy's sizes, its own shuffle), micro-batches of
`train.micro_batch_size`, loss `alignlab.losses.policy.clipped_value_loss` averaged over the
mini-batch's response tokens (micro-batches weighted by their share of the tokens of all
processes, so neither the micro-batch size nor the process count changes the gradient), the
gradient clipped at `train.max_grad_norm` (a non-finite norm skips the step), AdamW at
`critic.lr` with the policy's schedule, weight decay and betas. Its diagnostics are measured
on V_old before the update: value_error = mean (V_old - R)², explained_variance =
1 - Var(R - V_old) / Var(R), over all response tokens of all processes.

Checkpoints: the full weights, optimizer and scheduler are saved as `critic.pt` inside every
step checkpoint (`checkpoint_files`, written atomically with it), and restored from
`session.resume_from`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from alignlab.config import LoraConfig, option
from alignlab.losses.policy import clipped_value_loss
from alignlab.models.lm import TokenLogProbs
from alignlab.models.value import HEAD_INITS, TokenValues, load_value_model
from alignlab.ops import masked_sum
from alignlab.rl.policy_update import RLSession
from alignlab.rl.rollout import Rollout, token_logps
from alignlab.training import distributed
from alignlab.training.checkpoint import (
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
    save_reward_folder,
)
from alignlab.training.loop import autocast
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
    """The value model, its optimizer and schedule, on the session's runtime and rollouts."""

    def __init__(self, cfg: CriticConfig, session: RLSession) -> None:
        self.cfg, self.session = cfg, session
        runtime, train, model_cfg = session.runtime, session.train_cfg, session.cfg.model
        path = cfg.source(session.rl.reward, model_cfg.path)
        critic_cfg = dataclasses.replace(
            model_cfg,
            path=path,
            revision=model_cfg.revision if path == model_cfg.path else "",
            lora=LoraConfig(enabled=False),
        )
        # A new head is drawn from the global RNG, which a resumed session has just restored.
        with torch.random.fork_rng(devices=[]):
            self.model = load_value_model(
                critic_cfg, session.tokenizer, cfg.init, device=runtime.device, seed=train.seed
            )
        state = None
        if session.resume_from is not None:
            state = torch.load(
                session.resume_from / CHECKPOINT_FILE, map_location="cpu", weights_only=False
            )
            self.model.load_state_dict(state["model"])
        self.module = TokenValues(self.model)
        if runtime.distributed:
            distributed.shard_model(self.module, self.model, runtime)
        critic_train = dataclasses.replace(train, lr=cfg.lr)
        self.optimizer = build_optimizer(self.module, critic_train)
        total_updates = session.total_steps * session.updates_per_step
        self.scheduler = build_scheduler(self.optimizer, total_updates, critic_train)
        if state is not None:
            load_full_optimizer_state(self.module, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        if runtime.is_main:
            print(f"critic: {path} (value head: {cfg.init})")

    def values(self, roll: Rollout) -> torch.Tensor:
        """(N, T) float32 CPU values V_old at the response positions (eval mode, no grad)."""
        keys = ("input_ids", "attention_mask", "labels", "position_ids")
        batch = {key: getattr(roll, key) for key in keys}
        session = self.session
        return token_logps(
            self.module, batch, session.rl.generation_batch_size, session.train_cfg.mixed_precision
        )

    def update(
        self, step: int, roll: Rollout, old_values: torch.Tensor, returns: torch.Tensor
    ) -> dict[str, float]:
        """Clipped value-loss mini-batch updates towards `returns` (N, T); diagnostics."""
        start = time.perf_counter()
        session = self.session
        rl, runtime, train = session.rl, session.runtime, session.train_cfg
        device, world = runtime.device, runtime.world_size
        clip = self.cfg.value_clip or math.inf
        mask_all = roll.mask
        diagnostics = _value_diagnostics(old_values, returns, mask_all, runtime)
        generator = torch.Generator().manual_seed(session.step_seed(step, salt=2))
        sums = torch.zeros(3, dtype=torch.float64)  # loss, clipped tokens, tokens
        grad_norms: list[float] = []
        self.module.train()
        for _ in range(rl.num_iterations):
            order = torch.randperm(len(roll), generator=generator)
            for first in range(0, len(roll), session.local_mini):
                rows = order[first : first + session.local_mini]
                tokens = distributed.sum_floats([float(mask_all[rows].sum())], runtime)[0]
                for chunk in rows.split(train.micro_batch_size):
                    batch = roll.batch(chunk, device)
                    width = batch["input_ids"].shape[1]
                    mask = TokenLogProbs.mask(batch)
                    old = old_values[chunk, :width].to(device)
                    target = returns[chunk, :width].to(device)
                    with autocast(device, train.mixed_precision):
                        values = self.module(batch)
                    values = values.float()
                    loss = clipped_value_loss(values, old, target, mask, clip)
                    loss = loss * (mask.sum() / max(tokens, 1.0))  # share of the mini-batch
                    (loss * world).backward()  # FSDP averages gradients; we want the sum
                    with torch.no_grad():
                        clipped = old + (values - old).clamp(-clip, clip)
                        active = ((clipped - target) ** 2 > (values - target) ** 2).float()
                        sums[0] += loss.detach().double().item()
                        sums[1] += masked_sum(active, mask).item()
                        sums[2] += mask.sum().item()
                max_norm = train.max_grad_norm or math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
                if torch.isfinite(grad_norm):
                    self.optimizer.step()
                    grad_norms.append(float(grad_norm))
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
        loss_sum, clipped_tokens, counted = distributed.sum_floats(sums.tolist(), runtime)
        return {
            "value_loss": loss_sum / session.updates_per_step,
            "value_clip_fraction": clipped_tokens / max(counted, 1.0),
            **diagnostics,
            "critic_grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
            "critic_lr": self.scheduler.get_last_lr()[0],
            "critic_update_s": time.perf_counter() - start,
        }

    def checkpoint_files(self) -> dict[str, Any]:
        """{critic.pt: full weights, optimizer, scheduler} for a step checkpoint (collective)."""
        runtime = self.session.runtime
        state = {
            "model": full_model_state(self.model, runtime),
            "optimizer": full_optimizer_state(self.module, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
        }
        return {CHECKPOINT_FILE: state}

    def save(self, target: str | Path) -> Path:
        """The critic as a plain HF sequence-classification folder (collective)."""
        session = self.session
        return save_reward_folder(target, self.model, session.tokenizer, session.runtime)


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
