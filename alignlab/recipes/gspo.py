"""GSPO: group sequence policy optimisation (Zheng et al. 2025, arXiv:2507.18071).

GRPO's group advantages, with the importance ratio and its clip moved from tokens to whole
sequences, length-normalised:

    A_i = (r_i - mean(r)) / std(r)
    s_i = (π_θ(o_i | q) / π_old(o_i | q))^(1/|o_i|) = exp((1/|o_i|) Σ_t log ρ_it)
    L   = -(1/G) Σ_i min(s_i A_i, clip(s_i, 1 - ε_low, 1 + ε_high) A_i)    (+ β k3 per token)

computed per token in the GSPO-token form (`alignlab.losses.policy.gspo_token_losses`, the
same value and gradient for sequence-level advantages) and averaged per sequence. The
paper's clip range is narrow (ε_low 3e-4, ε_high 4e-4, the defaults here): s_i is a geometric
mean of token ratios. The paper trains without a KL term (`rl.kl_coef` defaults to 0).

Run: `alignlab gspo model.path=... data.path=prompts.jsonl rl.reward=...`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from alignlab.config import ModelConfig, TrainConfig, option, section
from alignlab.losses.policy import (
    gspo_log_ratio,
    gspo_token_losses,
    ppo_diagnostics,
    sequence_mean,
)
from alignlab.rl.advantages import grpo_advantages
from alignlab.rl.config import PromptDataConfig, RLConfig, RLReferenceConfig, check_rl
from alignlab.rl.kl import kl_k3
from alignlab.rl.minibatch import MicroBatch
from alignlab.rl.run import RLRun


@dataclasses.dataclass
class GSPOConfig:
    """GSPO: sequence-level, length-normalised importance ratio and clip; group advantages."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/gspo")
    rl: RLConfig = section(
        RLConfig, "sampling, reward and update (clip_eps: ε_low of s_i)", kl_coef=0.0, clip_eps=3e-4
    )
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    clip_eps_high: float = option(4e-4, "ε_high of the sequence ratio's clip", min=0)
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train, grouped=True)


def run(cfg: GSPOConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    job = RLRun(cfg, "gspo")
    rl = cfg.rl

    for step in job.steps():
        exp = job.collect(step, score_old_logps=job.updates_per_step > 1)
        kl_coef = job.kl_ctl.kl_coef

        # --- advantages: group-relative, one per response ---
        advantages = grpo_advantages(exp.grouped(exp.scores)).reshape(-1, 1)  # (N, 1)

        # --- loss: the sequence ratio s_i clipped per sequence (+ β k3); sequence mean ---
        def policy_losses(mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logps = mb.forward(job.policy)
            old, adv = mb.old_logps(logps), mb.take(advantages)
            losses = gspo_token_losses(logps, old, adv, mb.mask, rl.clip_eps, cfg.clip_eps_high)
            log_s = gspo_log_ratio(logps, old, mb.mask).expand_as(logps)
            diagnostics = ppo_diagnostics(losses, log_s, adv)  # of s_i, per token
            losses = losses * mb.tis_weights(old, rl.tis_cap, rl.tis_level)  # 1 when off
            if kl_coef:
                losses = losses + kl_coef * kl_k3(logps, mb.take(exp.ref_logps))
            return losses, diagnostics

        stats = job.update_policy(step, exp.rollout, policy_losses, sequence_mean)

        # --- KL controller, then guard-rails, metrics and the step checkpoint ---
        summary = exp.summary(job.runtime)
        job.kl_ctl.update(summary["kl_ref"], int(summary["samples"]))
        job.end_step(step, {**summary, "kl_coef": kl_coef, **stats, **exp.timings})

    return job.finish()
