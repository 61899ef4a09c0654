"""CISPO: clipped importance-sampling policy optimisation (MiniMax 2025, arXiv:2506.13585).

REINFORCE on group advantages, each token weighted by its importance ratio, clipped and
stop-gradient, so that no token loses its gradient (PPO's clip drops the tokens it clips,
often the rare "fork" tokens that matter):

    A_i = (r_i - mean(r)) / std(r)
    r̂_t = clip(ρ_t, 1 - ε_low, 1 + ε_high),   ρ_t = π_θ(o_t) / π_old(o_t)
    L   = -Σ_i Σ_t sg(r̂_it) A_i log π_θ(o_it) / Σ_i |o_i|         (+ β k3 per token)

The paper sets no effective lower bound (ε_low large: 1.0 here, a lower bound of 0) and tunes
ε_high (`clip_eps_high`); it trains without a KL term (`rl.kl_coef` defaults to 0). With one
optimizer step per rollout ρ = 1 and CISPO is REINFORCE with group advantages; the clip acts
on the later mini-batches and passes (`rl.mini_batch_size`, `rl.num_iterations`).

Run: `alignlab cispo model.path=... data.path=prompts.jsonl rl.reward=...`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from alignlab.config import ModelConfig, TrainConfig, option, section
from alignlab.losses.policy import cispo_token_losses, token_mean
from alignlab.rl.advantages import grpo_advantages
from alignlab.rl.config import PromptDataConfig, RLConfig, RLReferenceConfig, check_rl
from alignlab.rl.kl import kl_k3
from alignlab.rl.minibatch import MicroBatch
from alignlab.rl.run import RLRun


@dataclasses.dataclass
class CISPOConfig:
    """CISPO: REINFORCE with clipped, stop-gradient IS weights; group advantages."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/cispo")
    rl: RLConfig = section(
        RLConfig, "sampling, reward and update (clip_eps: ε_low of the IS weight)",
        kl_coef=0.0, clip_eps=1.0,
    )  # fmt: skip
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    clip_eps_high: float = option(0.28, "ε_high: the IS weight is at most 1 + ε_high", min=0)
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train, grouped=True)


def run(cfg: CISPOConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    job = RLRun(cfg, "cispo")
    rl = cfg.rl

    for step in job.steps():
        exp = job.collect(step, score_old_logps=job.updates_per_step > 1)
        kl_coef = job.kl_ctl.kl_coef

        # --- advantages: group-relative, one per response ---
        advantages = grpo_advantages(exp.grouped(exp.scores)).reshape(-1, 1)  # (N, 1)

        # --- loss per token: -sg(clip(ρ)) A log π (+ β k3); token mean ---
        def policy_losses(mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logps = mb.forward(job.policy)
            old, adv = mb.old_logps(logps), mb.take(advantages)
            losses = cispo_token_losses(logps, old, adv, rl.clip_eps, cfg.clip_eps_high)
            ratio = torch.exp(logps.detach() - old)
            clipped = (ratio > 1 + cfg.clip_eps_high) | (ratio < 1 - rl.clip_eps)
            approx_kl = kl_k3(old, logps.detach())  # k3 of KL(π_old || π_θ), as ppo_diagnostics
            diagnostics = {"clip_fraction": clipped.float(), "approx_kl": approx_kl}
            losses = losses * mb.tis_weights(old, rl.tis_cap, rl.tis_level)  # 1 when off
            if kl_coef:
                losses = losses + kl_coef * kl_k3(logps, mb.take(exp.ref_logps))
            return losses, diagnostics

        stats = job.update_policy(step, exp.rollout, policy_losses, token_mean)

        # --- KL controller, then guard-rails, metrics and the step checkpoint ---
        summary = exp.summary(job.runtime)
        job.kl_ctl.update(summary["kl_ref"], int(summary["samples"]))
        job.end_step(step, {**summary, "kl_coef": kl_coef, **stats, **exp.timings})

    return job.finish()
