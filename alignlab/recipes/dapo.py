"""DAPO: decoupled clip, dynamic sampling, token-level loss, overlong shaping (Yu et al. 2025).

"DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv:2503.14476. GRPO's
group advantages A_i = (r_i - mean(r)) / std(r) (every token of o_i) with four changes:

    ℓ_t = max(-A ρ_t, -A clip(ρ_t, 1 - ε_low, 1 + ε_high))      clip-higher: ε_high > ε_low
    L   = Σ_i Σ_t m_it ℓ_it / Σ_i Σ_t m_it                       token-level (token mean)
    r_i += overlong_penalty(|o_i|)                                soft overlong punishment
    m_it = 0 for truncated o_i when mask_truncated                overlong filtering

and dynamic sampling (`alignlab.rl.dynamic_sampling`): groups whose K rewards are all equal
(zero advantages, yet tokens in the mean) are dropped and redrawn, up to `max_draws` extra
batches. ε_low = `rl.clip_eps`, ε_high = `clip_eps_high`; no KL term by default.

Run: `alignlab dapo model.path=... data.path=prompts.jsonl rl.reward=...`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from alignlab.config import ConfigError, ModelConfig, TrainConfig, option, section
from alignlab.losses.policy import ppo_clip_token_losses, ppo_diagnostics, token_mean
from alignlab.rl.advantages import grpo_advantages, overlong_penalty
from alignlab.rl.config import PromptDataConfig, RLConfig, RLReferenceConfig, check_rl
from alignlab.rl.dynamic_sampling import dynamic_sample
from alignlab.rl.experience import Experience
from alignlab.rl.kl import kl_k3
from alignlab.rl.minibatch import MicroBatch
from alignlab.rl.run import RLRun


@dataclasses.dataclass
class DAPOConfig:
    """DAPO: clip-higher, dynamic sampling, token-mean loss, overlong shaping and filtering."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/dapo")
    rl: RLConfig = section(RLConfig, "sampling, reward and update (clip_eps: ε_low)", kl_coef=0.0)
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    clip_eps_high: float = option(0.28, "ε_high of clip-higher (the paper: 0.28, ε_low 0.2)", min=0)
    max_draws: int = option(3, "extra batches a step may sample to replace flat groups", min=0)
    overlong_buffer: int = option(0, "L_cache: penalise the last N budget tokens; 0 = off", min=0)
    mask_truncated: bool = option(True, "overlong filtering: truncated responses get no loss")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train, grouped=True)
        if self.overlong_buffer > self.rl.max_new_tokens:
            raise ConfigError(f"overlong_buffer={self.overlong_buffer} > rl.max_new_tokens")


def run(cfg: DAPOConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    job = RLRun(cfg, "dapo")
    rl = cfg.rl
    groups = rl.prompts_per_step // job.runtime.world_size

    def collect(step: int, draw: int) -> Experience:
        exp = job.collect(step, score_old_logps=job.updates_per_step > 1, draw=draw)
        if cfg.overlong_buffer:  # soft overlong punishment, before the flat-group filter
            lengths, budget = exp.rollout.response_lengths, rl.max_new_tokens
            exp.scores = exp.scores + overlong_penalty(lengths, budget, cfg.overlong_buffer)
        return exp

    for step in job.steps():
        # --- dynamic sampling: `groups` informative groups per process, flat ones redrawn ---
        batch = dynamic_sample(collect, step, groups, cfg.max_draws, job.runtime)
        exp, kl_coef = batch.exp, job.kl_ctl.kl_coef

        # --- advantages: group-relative; padding groups and truncated responses masked out ---
        advantages = grpo_advantages(exp.grouped(exp.scores)).reshape(-1, 1)  # (N, 1)
        counts = batch.informative & (exp.rollout.finished if cfg.mask_truncated else True)
        loss_mask = exp.mask & counts[:, None]

        # --- loss per token: clip-higher surrogate (+ β k3); token mean over kept tokens ---
        def policy_losses(mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logps = mb.forward(job.policy)
            old, adv = mb.old_logps(logps), mb.take(advantages)
            losses = ppo_clip_token_losses(logps, old, adv, rl.clip_eps, cfg.clip_eps_high)
            diagnostics = ppo_diagnostics(losses, logps - old, adv)
            losses = losses * mb.tis_weights(old, rl.tis_cap, rl.tis_level)  # 1 when off
            if kl_coef:
                losses = losses + kl_coef * kl_k3(logps, mb.take(exp.ref_logps))
            return losses, diagnostics

        stats = job.update_policy(step, exp.rollout, policy_losses, token_mean, loss_mask=loss_mask)

        # --- KL controller, then guard-rails, metrics (reward: the unfiltered batch's), save ---
        summary = batch.summary(job.runtime)
        job.kl_ctl.update(summary["kl_ref"], int(summary["samples"]))
        job.end_step(step, {**summary, "kl_coef": kl_coef, **stats, **exp.timings})

    return job.finish()
