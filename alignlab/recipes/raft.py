"""RAFT / rejection-sampling fine-tuning: SFT on the best of K samples per prompt, repeated.

Reward-ranked fine-tuning, Dong et al. 2023, arXiv:2304.06767; the rejection-sampling
fine-tuning of Llama 2, Touvron et al. 2023, arXiv:2307.09288:

    for t in 1..T:                                          (iterations)
        prompts_t ⊂ prompts                                 (prompts_per_iteration; 0 = all)
        y_1..y_K ~ π_θ(·|x)  for x ∈ prompts_t              (sampling.samples_per_prompt)
        y*(x) = argmax_k R(x, y_k),  kept when R(x, y*) ≥ min_reward (if set)
        π_θ ← argmin_θ  - Σ_x log π_θ(y*(x) | x)            (SFT from the current model)

Each iteration samples from and fine-tunes the previous iteration's model.

Run: `alignlab raft --config raft_lab model.path=... data.path=prompts.jsonl
sampling.reward=runs/rm/final`, or under `torchrun --nproc_per_node N -m alignlab.cli raft ...`
(prompts sampled across processes, SFT stages under FSDP2). docs/methods/raft.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignlab.config import ModelConfig, TrainConfig, option, section
from alignlab.recipes import sft
from alignlab.rl.config import PromptDataConfig
from alignlab.rl.sample_filter import (
    SampleConfig,
    SampleFilterSession,
    best_per_prompt,
    check_stages,
    mean,
)
from alignlab.training.batches import BatchSchedule


@dataclasses.dataclass
class RAFTConfig:
    """RAFT / rejection-sampling fine-tuning: SFT on the best of K samples per prompt."""

    model: ModelConfig = section(ModelConfig, "the policy to improve")
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(
        TrainConfig, "each iteration's SFT (output_dir: the run)", output_dir="runs/raft"
    )
    sampling: SampleConfig = section(SampleConfig, "sampling (K = samples_per_prompt), reward")
    iterations: int = option(3, "T: rounds of sample, pick the best, fine-tune", min=1)
    prompts_per_iteration: int = option(
        0, "prompts sampled per iteration (reshuffled each epoch); 0 = all of them", min=0
    )
    min_reward: float | None = option(
        None, "keep a prompt's best response only when its reward is >= this; null = always"
    )
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_stages(self.model)


def run(cfg: RAFTConfig) -> Path:
    """Sample, rank, fine-tune for `iterations` rounds; return the final model's folder."""
    # --- setup: prompts, reward and gold functions, metrics ---
    session = SampleFilterSession(cfg, "raft", sft.stage)
    policy = cfg.model.path
    per_iteration = cfg.prompts_per_iteration or len(session.rows)
    schedule = BatchSchedule(len(session.rows), per_iteration, cfg.train.seed)
    k = cfg.sampling.samples_per_prompt

    for iteration in range(cfg.iterations):
        # --- sample K responses per prompt of this iteration's batch, scored ---
        stage_dir = session.output_dir / f"iteration_{iteration}"
        rows = [session.rows[i] for i in schedule.step_indices(iteration)]
        samples = session.sample(policy, rows, stage_dir, session.seed(iteration))

        # --- rank: the best response per prompt, optionally only above min_reward ---
        best = best_per_prompt(samples.rewards, k)
        keep = [n for n in best if cfg.min_reward is None or samples.rewards[n] >= cfg.min_reward]

        # --- fine-tune the current model on them ---
        policy = session.finetune(policy, samples.records(keep), stage_dir)
        record = {
            "reward_mean": mean(samples.rewards),
            "best_reward_mean": mean([samples.rewards[n] for n in best]),
            "kept": len(keep),
            "kept_fraction": len(keep) / len(best),
            "finished_fraction": mean([float(f) for f in samples.finished]),
        }
        if samples.gold is not None:
            record["gold_mean"] = mean(samples.gold)
            record["kept_gold_mean"] = mean([samples.gold[n] for n in keep])
        session.metrics.log(iteration + 1, record, prefix="raft/")

    # --- final model ---
    return session.finish(policy)
