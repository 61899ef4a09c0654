"""PPO-RLHF: KL-penalised reward-model reward, a learned critic, GAE and PPO-clip (InstructGPT).

Ouyang et al. 2022, "Training language models to follow instructions with human feedback",
arXiv:2203.02155 (InstructGPT, PPO and PPO-ptx); Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences", arXiv:1909.08593 (the KL-penalised reward, adaptive β);
Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347; GAE:
Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation", arXiv:1506.02438.

For each sampled response y = y_1..y_n to prompt x, s_t the state y_t is sampled from, the
per-token KL estimate kl_t between the sampling policy and the reference (`kl_estimator`:
k1 = log π_old(y_t) - log π_ref(y_t), or k3) and β = `rl.kl_coef` (adaptive when
`rl.kl_target` > 0):

    r_t = 1[t = n] r(x, y) - β kl_t                      r(x, y): the score after rl.* shaping
    δ_t = r_t + γ V_old(s_{t+1}) - V_old(s_t)            V_old(s_{n+1}) = 0
    A_t = Σ_{l ≥ 0} (γλ)^l δ_{t+l},    R_t = A_t + V_old(s_t)        (GAE, λ-returns)
    Â_t = (A_t - mean A) / std A                         over the step's response tokens
    L_π = Σ_{i,t} max(-Â ρ, -Â clip(ρ, 1 - ε, 1 + ε)) / Σ_i n_i  [+ γ_ptx · NLL(ptx batch)]
    L_V = ½ Σ_{i,t} max((V - R)², (V_old + clip(V - V_old, -c, c) - R)²) / Σ_i n_i

ρ = π_θ(y_t | s_t) / π_old(y_t | s_t), ε = `rl.clip_eps`, c = `critic.value_clip`,
γ = `gamma`, λ = `lam`, γ_ptx = `ptx.coef`. Policy and critic each make `rl.num_iterations`
passes over the rollout in mini-batches of `rl.mini_batch_size`, each with its own AdamW; the
PPO-ptx term is the token-mean NLL of `ptx.batch_size` sequences of `ptx.path`, added at every
policy optimizer step. The critic (`alignlab.rl.critic`) starts from the reward model when
`rl.reward` is one RM folder (as in InstructGPT), else from the policy with a zero head.

Run: `alignlab ppo model.path=<sft model> data.path=prompts.jsonl rl.reward=<rm folder>`;
the final policy is `<output_dir>/final`, the critic `<output_dir>/critic`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import torch

from alignlab.config import ConfigError, DataConfig, ModelConfig, TrainConfig, option, section
from alignlab.data.collate import collate
from alignlab.data.tokenize import build_sft_dataset
from alignlab.losses.policy import (
    ppo_clip_token_losses,
    ppo_diagnostics,
    token_mean,
)
from alignlab.ops import masked_whiten
from alignlab.rl.advantages import gae, kl_penalised_rewards
from alignlab.rl.config import PromptDataConfig, RLConfig, RLReferenceConfig, check_rl
from alignlab.rl.critic import Critic, CriticConfig
from alignlab.rl.experience import gather_rows
from alignlab.rl.kl import kl_k3
from alignlab.rl.minibatch import MicroBatch
from alignlab.rl.run import RLRun
from alignlab.training import distributed
from alignlab.training.batches import BatchSchedule, micro_batches
from alignlab.training.loop import autocast


@dataclasses.dataclass
class PtxConfig:
    """PPO-ptx: a pretraining / SFT log-likelihood term in every policy step (InstructGPT)."""

    path: str = option(
        "", "text, prompt/completion or messages rows (SFT formats); empty = off", kind="data"
    )
    coef: float = option(0.0, "γ_ptx: weight of the ptx token-mean NLL in the policy loss", min=0)
    batch_size: int = option(8, "ptx sequences per policy optimizer step (all processes)", min=1)
    max_length: int = option(512, "max tokens per ptx sequence (longer ones are cut)", min=1)

    def check(self) -> None:
        if self.coef > 0 and not self.path:
            raise ConfigError("ptx.coef > 0 needs ptx.path: the pretraining / SFT data")
        if self.path and self.coef == 0:
            raise ConfigError("ptx.path is set but ptx.coef=0: set ptx.coef or drop ptx.path")


@dataclasses.dataclass
class PPOConfig:
    """PPO-RLHF (InstructGPT): KL-penalised reward, GAE with a learned critic, PPO-clip."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(
        TrainConfig, "optimisation loop (policy; critic.lr for critic)", output_dir="runs/ppo"
    )
    rl: RLConfig = section(RLConfig, "sampling, reward and update (rl.kl_coef: KL in the reward)")
    reference: RLReferenceConfig = section(RLReferenceConfig, "reference policy of the KL term")
    critic: CriticConfig = section(CriticConfig, "the value model")
    ptx: PtxConfig = section(PtxConfig, "PPO-ptx pretraining term (off by default)")
    gamma: float = option(1.0, "GAE discount γ per token", min=0, max=1)
    lam: float = option(0.95, "GAE λ: 1 = Monte Carlo returns, 0 = one-step TD", min=0, max=1)
    kl_estimator: str = option(
        "k1",
        "per-token KL in the reward: k1 = log π_old - log π_ref, k3 (>= 0)",
        choices=("k1", "k3"),
    )
    whiten_advantages: bool = option(
        True, "normalise advantages over the step's response tokens (all processes)"
    )
    final_dir: str = option("", "where the final policy goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_rl(self.rl, self.reference, self.model, self.train)


def ptx_loss_fn(cfg: PtxConfig, job: RLRun) -> Callable[[], torch.Tensor]:
    """γ_ptx · token-mean NLL of the next ptx batch, this process's share (an `extra_loss` of
    the policy update). Batch u of the run is a function of (seed, u): a resumed run sees the
    batches the uninterrupted one would."""
    runtime, train, policy = job.runtime, job.train_cfg, job.policy
    if cfg.batch_size % runtime.world_size:
        raise ConfigError(
            f"ptx.batch_size={cfg.batch_size} must be a multiple of the "
            f"{runtime.world_size} processes"
        )
    rows, report = build_sft_dataset(
        DataConfig(path=cfg.path, max_length=cfg.max_length), job.tokenizer
    )
    if runtime.is_main:
        print(f"ptx: {report.summary()}")
    schedule = BatchSchedule(len(rows), cfg.batch_size, train.seed)
    per_rank = cfg.batch_size // runtime.world_size
    updates = itertools.count(job.start_step * job.updates_per_step)

    def ptx_loss() -> torch.Tensor:
        indices = micro_batches(schedule.step_indices(next(updates)), runtime, per_rank, 1)[0]
        batch = collate([rows[i] for i in indices], job.tokenizer.pad_token_id)
        batch = {key: value.to(runtime.device) for key, value in batch.items()}
        with autocast(runtime.device, train.mixed_precision):
            logps = policy(batch)  # (B, T), 0 where not trained
        tokens = distributed.sum_floats([float(policy.mask(batch).sum())], runtime)[0]
        return -cfg.coef * logps.float().sum() / max(tokens, 1.0)

    return ptx_loss


def run(cfg: PPOConfig) -> Path:
    """Train; return the folder of the final policy (a plain HF folder)."""
    # --- setup: prompts, policy, reference, optimizer, resume, reward functions ---
    job = RLRun(cfg, "ppo")
    rl = cfg.rl

    # --- critic: its own weights and AdamW, saved inside every step checkpoint ---
    critic = Critic(
        cfg.critic, cfg.model, cfg.train, job.tokenizer, job.runtime,
        job.total_steps * job.updates_per_step, job.resume_from, reward=rl.reward,
    )  # fmt: skip
    ptx_loss = ptx_loss_fn(cfg.ptx, job) if cfg.ptx.coef else None

    for step in job.steps():
        exp = job.collect(step)  # samples, shaped scores, π_old and reference log-probs
        mask, kl_coef = exp.mask, job.kl_ctl.kl_coef

        # --- per-token rewards: -β·KL on every token, the score on the last one ---
        kl = exp.token_kl  # k1
        if cfg.kl_estimator == "k3" and exp.ref_logps is not None:
            kl = kl_k3(exp.rollout.old_logps, exp.ref_logps) * mask
        rewards = kl_penalised_rewards(exp.scores, kl, mask, kl_coef)  # (N, T)

        # --- GAE on the critic's values before the update; whitened over all processes ---
        old_values = critic.values(exp.rollout, rl.generation_batch_size)  # (N, T)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            full, full_mask, mine = gather_rows(job.runtime, advantages, mask)
            advantages = (masked_whiten(full, full_mask) * full_mask)[mine]

        # --- policy: PPO clipped surrogate per token, token mean (+ γ_ptx NLL per step) ---
        def policy_losses(mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logps = mb.forward(job.policy)
            old, adv = mb.old_logps(logps), mb.take(advantages)
            losses = ppo_clip_token_losses(logps, old, adv, rl.clip_eps)
            diagnostics = ppo_diagnostics(losses, logps - old, adv)
            losses = losses * mb.tis_weights(old, rl.tis_cap, rl.tis_level)  # 1 when off
            return losses, diagnostics

        stats = job.update_policy(step, exp.rollout, policy_losses, token_mean, ptx_loss)
        if ptx_loss is not None:
            stats["ptx_nll"] = stats.pop("extra_loss") / cfg.ptx.coef

        # --- critic: clipped value loss towards the GAE returns ---
        stats.update(
            critic.update(exp.rollout, old_values, returns, job.sizes, job.generator(step, salt=2))
        )

        # --- KL controller, then guard-rails, metrics and the step checkpoint ---
        summary = exp.summary(job.runtime)
        job.kl_ctl.update(summary["kl_ref"], int(summary["samples"]))
        record = {**summary, "kl_coef": kl_coef, **stats, **exp.timings}
        job.end_step(step, record, extra_files=critic.checkpoint_files)

    # --- final policy and critic ---
    critic.save(job.output_dir / "critic")
    return job.finish()
