"""GRPO: group-relative policy optimisation, no critic (Shao et al. 2024, arXiv:2402.03300).

For each prompt q, K responses o_1..o_K are sampled from π_old and scored r_1..r_K:

    A_i = (r_i - mean(r)) / (std(r) + 1e-4)         every token of o_i gets A_i
    ρ_t = π_θ(o_t | q, o_<t) / π_old(o_t | q, o_<t)
    ℓ_t = max(-A ρ_t, -A clip(ρ_t, 1 - ε, 1 + ε)) + β k3_t,
    k3_t = π_ref/π_θ - 1 - log(π_ref/π_θ)            (KL to the reference, in the loss)
    L = (1/G) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}              (sequence mean)

over `rl.num_iterations` passes of mini-batch updates per rollout, β = `rl.kl_coef`. With one
optimizer step per rollout the update's forward runs on the sampling weights, so π_old comes
from it (detached) and the separate scoring pass is skipped (TRL does the same). `dr_grpo=true` is Dr. GRPO
(Liu et al. 2025, arXiv:2503.20783): A_i = r_i - mean(r) (no std) and
L = (1/G) Σ_i Σ_t ℓ_{i,t} / rl.max_new_tokens (no per-response length normalisation).

Run: `alignlab grpo model.path=... data.path=prompts.jsonl rl.reward=mypkg.rewards:fn`,
or under `torchrun --nproc_per_node N -m alignlab.cli grpo ...` for FSDP2.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from alignlab.config import ModelConfig, TrainConfig, option, section
from alignlab.losses.policy import (
    ppo_clip_token_losses,
    ppo_diagnostics,
    sequence_mean,
    token_sum_constant,
)
from alignlab.rl.advantages import grpo_advantages
from alignlab.rl.config import PromptDataConfig, RLConfig, RLReferenceConfig, check_rl
from alignlab.rl.kl import kl_k3
from alignlab.rl.minibatch import MicroBatch
from alignlab.rl.run import RLRun


@dataclasses.dataclass
class GRPOConfig:
    """GRPO / Dr. GRPO: K samples per prompt, group-normalised advantages, KL in the loss."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/grpo")
    rl: RLConfig = section(RLConfig, "sampling, reward and update (rl.kl_coef: KL in the loss)")
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    dr_grpo: bool = option(False, "Dr. GRPO: no std scaling, constant length normalisation")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train, grouped=True)


def run(cfg: GRPOConfig, vision: bool = False) -> Path:
    """Train; return the folder of the final model (a plain HF folder). `vision`: an
    image-text-to-text policy on prompts with images (`alignlab.recipes.vlm_grpo`)."""
    # --- setup: prompts, policy, reference, optimizer, resume, reward functions ---
    job = RLRun(cfg, "vlm_grpo" if vision else "grpo", vision)
    rl = cfg.rl

    for step in job.steps():
        # --- rollout: K samples per prompt, rewards, reference log-probs (π_old below) ---
        exp = job.collect(step, score_old_logps=job.updates_per_step > 1)
        kl_coef = job.kl_ctl.kl_coef

        # --- advantages: group-relative, one per response ---
        advantages = grpo_advantages(exp.grouped(exp.scores), scale=not cfg.dr_grpo)
        advantages = advantages.reshape(-1, 1)  # (N, 1)

        # --- loss per token: clipped surrogate + β k3(π_θ, π_ref); sequence mean (Dr.: Σ / L) ---
        def policy_losses(mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logps = mb.forward(job.policy)
            old, adv = mb.old_logps(logps), mb.take(advantages)
            surrogate = ppo_clip_token_losses(logps, old, adv, rl.clip_eps)
            diagnostics = ppo_diagnostics(surrogate, logps - old, adv)
            surrogate = surrogate * mb.tis_weights(old, rl.tis_cap, rl.tis_level)  # 1 when off
            if not kl_coef:
                return surrogate, diagnostics
            kl = kl_k3(logps, mb.take(exp.ref_logps))
            return surrogate + kl_coef * kl, {**diagnostics, "kl_loss": kl.detach()}

        aggregate = sequence_mean
        if cfg.dr_grpo:
            aggregate = functools.partial(token_sum_constant, max_len=rl.max_new_tokens)
        stats = job.update_policy(step, exp.rollout, policy_losses, aggregate)

        # --- KL controller, then guard-rails, metrics and the step checkpoint ---
        summary = exp.summary(job.runtime)
        job.kl_ctl.update(summary["kl_ref"], int(summary["samples"]))
        job.end_step(step, {**summary, "kl_coef": kl_coef, **stats, **exp.timings})

    # --- final model ---
    return job.finish()
