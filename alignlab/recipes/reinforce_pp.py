"""REINFORCE++: critic-free PPO with token-level KL in the reward and global advantage
normalisation (Hu 2025, arXiv:2501.03262).

For each sampled response y to prompt x (K >= 1 per prompt), with the KL per token
k1_t = log π_old(y_t) - log π_ref(y_t) and β = `rl.kl_coef`:

    r_t = 1[t = last token] r(x, y) - β k1_t
    G_t = Σ_{s ≥ t} r_s                               (γ = 1)
    A_t = (G_t - mean(G)) / sqrt(var(G) + 1e-8)       over every response token of the batch
    ℓ_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))
    L   = Σ_{i,t} ℓ_{i,t} / Σ_i |y_i|                 (token mean)

`alignlab.rl.advantages.reinforce_pp_advantages` computes A. Under torchrun the rollout of all
processes is gathered first, so the normalisation is over the global batch here too.

`baseline=true` is REINFORCE++-baseline (the paper's variant for K > 1 samples per prompt):
A_i = r_i - mean of its group, whitened over the batch's tokens
(`reinforce_pp_baseline_advantages`), and the KL moves from the reward into the loss as
β k2_t = β ½ (log π_θ(y_t) - log π_ref(y_t))², whose gradient is that of KL(π_θ || π_ref).

Run: `alignlab reinforce_pp model.path=... data.path=prompts.jsonl rl.reward=...`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from alignlab.config import ModelConfig, TrainConfig, option, section
from alignlab.losses.policy import (
    ppo_clip_token_losses,
    ppo_diagnostics,
    token_mean,
)
from alignlab.rl.advantages import reinforce_pp_advantages, reinforce_pp_baseline_advantages
from alignlab.rl.config import PromptDataConfig, RLConfig, RLReferenceConfig, check_rl
from alignlab.rl.experience import gather_rows
from alignlab.rl.kl import kl_k2
from alignlab.rl.minibatch import MicroBatch
from alignlab.rl.run import RLRun


@dataclasses.dataclass
class ReinforcePPConfig:
    """REINFORCE++: per-token KL in the reward, batch-normalised returns, PPO-clip, no critic."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/reinforce_pp")
    rl: RLConfig = section(RLConfig, "sampling, reward and update (rl.kl_coef: KL in the reward)")
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    baseline: bool = option(False, "REINFORCE++-baseline: group-mean baseline, k2 KL in the loss")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train, grouped=self.baseline)


def run(cfg: ReinforcePPConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    # --- setup: prompts, policy, reference, optimizer, resume, reward functions ---
    job = RLRun(cfg, "reinforce_pp")
    rl = cfg.rl

    for step in job.steps():
        exp = job.collect(step)  # samples, rewards, π_old and reference log-probs
        kl_coef = job.kl_ctl.kl_coef

        # --- advantages: KL-penalised token returns (baseline: group-centred rewards),
        # whitened over the global batch ---
        scores, kl, mask, mine = gather_rows(job.runtime, exp.scores, exp.token_kl, exp.mask)
        if cfg.baseline:
            grouped = scores.view(-1, rl.samples_per_prompt)
            advantages = reinforce_pp_baseline_advantages(grouped, mask)[mine]  # (N, T)
        else:
            advantages = reinforce_pp_advantages(scores, kl, mask, kl_coef)[mine]  # (N, T)

        # --- loss per token: PPO clipped surrogate; token mean ---
        def policy_losses(mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logps = mb.forward(job.policy)
            old, adv = mb.old_logps(logps), mb.take(advantages)
            losses = ppo_clip_token_losses(logps, old, adv, rl.clip_eps)
            diagnostics = ppo_diagnostics(losses, logps - old, adv)
            losses = losses * mb.tis_weights(old, rl.tis_cap, rl.tis_level)  # 1 when off
            if cfg.baseline and kl_coef:  # the KL in the loss: k2 to the reference
                losses = losses + kl_coef * kl_k2(logps, mb.take(exp.ref_logps))
            return losses, diagnostics

        stats = job.update_policy(step, exp.rollout, policy_losses, token_mean)

        # --- KL controller, then guard-rails, metrics and the step checkpoint ---
        summary = exp.summary(job.runtime)
        job.kl_ctl.update(summary["kl_ref"], int(summary["samples"]))
        job.end_step(step, {**summary, "kl_coef": kl_coef, **stats, **exp.timings})

    # --- final model ---
    return job.finish()
