"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, arXiv:2402.14740).

For each prompt x, K responses y_1..y_K are sampled from π_old. The KL penalty is in the
reward, as in the paper (k1 summed over the response, β = `rl.beta`):

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
from pathlib import Path

from alignlab.config import ConfigError, ModelConfig, TrainConfig, option, section
from alignlab.rl.advantages import rloo_advantages
from alignlab.rl.policy_update import (
    PromptDataConfig,
    RLConfig,
    RLReferenceConfig,
    RLSession,
    check_rl,
)


@dataclasses.dataclass
class RLOOConfig:
    """RLOO: K samples per prompt, leave-one-out baseline, sequence-level REINFORCE."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/rloo")
    rl: RLConfig = section(RLConfig, "sampling, reward and update (rl.beta: KL in the reward)")
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    clip: bool = option(False, "PPO-clip the token ratios (off: plain importance-weighted)")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train)
        if self.rl.samples_per_prompt < 2:
            raise ConfigError("RLOO needs rl.samples_per_prompt >= 2 (the leave-one-out baseline)")


def run(cfg: RLOOConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    # --- setup: prompts, policy, reference, optimizer, resume, reward functions ---
    session = RLSession(cfg, "rloo")

    # --- loop ---
    for step in session.steps():
        exp = session.collect(step)  # K samples per prompt, rewards, reference log-probs

        # --- advantages: KL-penalised sequence reward minus the mean of the other K - 1 ---
        penalised = exp.scores - exp.beta * exp.sequence_kl  # (N,)
        advantages = rloo_advantages(exp.grouped(penalised)).reshape(-1, 1)  # (N, 1)

        # --- sequence-level REINFORCE: Σ_t over the response, mean over responses ---
        stats = session.update(step, exp, advantages, aggregation="sequence_sum", clip=cfg.clip)
        session.end_step(step, exp, stats)

    # --- final model ---
    return session.finish()
