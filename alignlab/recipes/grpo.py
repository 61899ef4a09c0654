"""GRPO: group-relative policy optimisation, no critic (Shao et al. 2024, arXiv:2402.03300).

For each prompt q, K responses o_1..o_K are sampled from π_old and scored r_1..r_K:

    A_i = (r_i - mean(r)) / (std(r) + 1e-4)         every token of o_i gets A_i
    ρ_t = π_θ(o_t | q, o_<t) / π_old(o_t | q, o_<t)
    ℓ_t = max(-A ρ_t, -A clip(ρ_t, 1 - ε, 1 + ε)) + β k3_t,
    k3_t = π_ref/π_θ - 1 - log(π_ref/π_θ)            (KL to the reference, in the loss)
    L = (1/G) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}              (sequence mean)

over `rl.num_iterations` passes of mini-batch updates per rollout. `dr_grpo=true` is Dr. GRPO
(Liu et al. 2025, arXiv:2503.20783): A_i = r_i - mean(r) (no std) and
L = (1/G) Σ_i Σ_t ℓ_{i,t} / rl.max_new_tokens (no per-response length normalisation).

Run: `alignlab grpo model.path=... data.path=prompts.jsonl rl.reward=mypkg.rewards:fn`,
or under `torchrun --nproc_per_node N -m alignlab.cli grpo ...` for FSDP2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignlab.config import ModelConfig, TrainConfig, option, section
from alignlab.rl.advantages import grpo_advantages
from alignlab.rl.policy_update import (
    PromptDataConfig,
    RLConfig,
    RLReferenceConfig,
    RLSession,
    check_rl,
)


@dataclasses.dataclass
class GRPOConfig:
    """GRPO / Dr. GRPO: K samples per prompt, group-normalised advantages, KL in the loss."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/grpo")
    rl: RLConfig = section(RLConfig, "sampling, reward and update")
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    dr_grpo: bool = option(False, "Dr. GRPO: no std scaling, constant length normalisation")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train)


def run(cfg: GRPOConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    # --- setup: prompts, policy, reference, optimizer, resume, reward functions ---
    session = RLSession(cfg, "grpo")

    # --- loop ---
    for step in session.steps():
        exp = session.collect(step)  # K samples per prompt, rewards, reference log-probs

        # --- advantages: group-relative, one per response ---
        grouped = exp.grouped(exp.scores)  # (P, K)
        advantages = grpo_advantages(grouped, scale=not cfg.dr_grpo).reshape(-1, 1)  # (N, 1)

        # --- clipped surrogate + β k3 in the loss ---
        stats = session.update(
            step,
            exp,
            advantages,
            aggregation="token_sum_constant" if cfg.dr_grpo else "sequence_mean",
            kl_loss_coef=exp.beta,
        )
        session.end_step(step, exp, stats)

    # --- final model ---
    return session.finish()
