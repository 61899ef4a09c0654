"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, arXiv:2402.14740).

For each prompt x, K responses y_1..y_K are sampled from π_old. The KL penalty is in the
reward, as in the paper (k1 summed over the response, β = `rl.kl_coef`):

    R_i = r(x, y_i) - β Σ_t (log π_old(y_i,t) - log π_ref(y_i,t))
    A_i = R_i - (1 / (K - 1)) Σ_{j ≠ i} R_j
    L   = -(1/N) Σ_i A_i Σ_t ρ_{i,t},   ρ_{i,t} = π_θ(y_i,t) / π_old(y_i,t)

With one pass over the rollout in one mini-batch (the defaults here) ρ = 1 and the gradient
is exactly the sequence-level REINFORCE estimator -(1/N) Σ_i A_i ∇ log π_θ(y_i | x) of the
paper. `clip=true` clips each token's ratio PPO-style (for `rl.num_iterations` > 1 or
several mini-batches), which the paper does not use.

Run: `alignlab rloo model.path=... data.path=prompts.jsonl rl.reward=...`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from alignlab.config import ModelConfig, TrainConfig, option, section
from alignlab.losses.policy import (
    ppo_clip_token_losses,
    ppo_diagnostics,
    sequence_sum,
)
from alignlab.rl.advantages import rloo_advantages
from alignlab.rl.config import PromptDataConfig, RLConfig, RLReferenceConfig, check_rl
from alignlab.rl.minibatch import MicroBatch
from alignlab.rl.run import RLRun


@dataclasses.dataclass
class RLOOConfig:
    """RLOO: K samples per prompt, leave-one-out baseline, sequence-level REINFORCE."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/rloo")
    rl: RLConfig = section(RLConfig, "sampling, reward and update (rl.kl_coef: KL in the reward)")
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    clip: bool = option(False, "PPO-clip the token ratios (off: plain importance-weighted)")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train, grouped=True)


def run(cfg: RLOOConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    # --- setup: prompts, policy, reference, optimizer, resume, reward functions ---
    job = RLRun(cfg, "rloo")
    rl = cfg.rl
    clip_eps = rl.clip_eps if cfg.clip else math.inf  # inf: -A ρ, the unclipped estimator

    for step in job.steps():
        exp = job.collect(step)  # K samples per prompt, rewards, π_old and reference log-probs
        kl_coef = job.kl_ctl.kl_coef

        # --- advantages: KL-penalised sequence reward minus the mean of the other K - 1 ---
        penalised = exp.scores - kl_coef * exp.sequence_kl  # (N,)
        advantages = rloo_advantages(exp.grouped(penalised)).reshape(-1, 1)  # (N, 1)

        # --- loss per token: -A ρ_t; Σ_t over the response, mean over responses ---
        def policy_losses(mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logps = mb.forward(job.policy)
            old, adv = mb.old_logps(logps), mb.take(advantages)
            losses = ppo_clip_token_losses(logps, old, adv, clip_eps)
            diagnostics = ppo_diagnostics(losses, logps - old, adv)
            losses = losses * mb.tis_weights(old, rl.tis_cap, rl.tis_level)  # 1 when off
            return losses, diagnostics

        stats = job.update_policy(step, exp.rollout, policy_losses, sequence_sum)

        # --- KL controller, then guard-rails, metrics and the step checkpoint ---
        summary = exp.summary(job.runtime)
        job.kl_ctl.update(summary["kl_ref"], int(summary["samples"]))
        job.end_step(step, {**summary, "kl_coef": kl_coef, **stats, **exp.timings})

    # --- final model ---
    return job.finish()
