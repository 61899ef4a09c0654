"""ReST: Grow (sample and score) then Improve (SFT above rising reward thresholds), repeated.

Reinforced Self-Training, Gulcehre et al. 2023, arXiv:2308.08998:

    for g in 1..G:                                         (grow_steps)
        Grow:    D_g = {(x, y, R(x, y)) : x ∈ prompts, y ~ π_θ(·|x), samples_per_prompt each}
        for i in 1..I, τ_1 < τ_2 < ... < τ_I:              (improve_steps, thresholds)
            Improve: π_θ ← argmin_θ  - Σ_{(x,y) ∈ D_g, R(x,y) ≥ τ_i}  log π_θ(y|x)

Each Improve step fine-tunes the previous Improve step's model (the paper's default) with the
SFT loss on the Grow set filtered at a rising threshold; the next Grow step samples from the
last one. `threshold_mode=quantile` (default) reads each τ_i as a quantile of the Grow set's
rewards (0.5 keeps the better half; 0 keeps every sample); `absolute` as a reward value, as in
the paper.

Run: `alignlab rest --config rest_lab model.path=... data.path=prompts.jsonl
sampling.reward=runs/rm/final`, or under `torchrun --nproc_per_node N -m alignlab.cli rest ...`
(prompts sampled across processes, SFT stages under FSDP2). docs/methods/rest.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignlab.config import ConfigError, ModelConfig, TrainConfig, option, section
from alignlab.recipes import sft
from alignlab.rl.config import PromptDataConfig
from alignlab.rl.sample_filter import (
    SampleConfig,
    SampleFilterSession,
    at_or_above,
    check_stages,
    mean,
    quantile_threshold,
)


@dataclasses.dataclass
class ReSTConfig:
    """ReST: Grow (sample and score) then Improve (SFT above rising reward thresholds)."""

    model: ModelConfig = section(ModelConfig, "the policy to improve")
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    train: TrainConfig = section(
        TrainConfig, "each Improve step's SFT (output_dir: the run)", output_dir="runs/rest"
    )
    sampling: SampleConfig = section(SampleConfig, "the Grow step's sampling and reward")
    grow_steps: int = option(2, "G: Grow steps, each sampling from the latest policy", min=1)
    improve_steps: int = option(3, "I: Improve steps per Grow step, one per threshold", min=1)
    thresholds: list[float] = option(
        [0.0, 0.5, 0.8], "τ_1 < ... < τ_I, one per Improve step (see threshold_mode)"
    )
    threshold_mode: str = option(
        "quantile",
        "quantile: τ is a quantile of the Grow set's rewards; absolute: a reward value",
        choices=("quantile", "absolute"),
    )
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        check_stages(self.model)
        if len(self.thresholds) != self.improve_steps:
            raise ConfigError(
                f"thresholds: {len(self.thresholds)} values for improve_steps="
                f"{self.improve_steps}; give one threshold per Improve step"
            )
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise ConfigError(f"thresholds: {self.thresholds} must increase strictly (τ_1 < τ_2)")
        if self.threshold_mode == "quantile" and not all(0 <= q <= 1 for q in self.thresholds):
            raise ConfigError(
                f"thresholds: {self.thresholds} are quantiles (threshold_mode=quantile), so they "
                "must lie in [0, 1]"
            )


def run(cfg: ReSTConfig) -> Path:
    """Grow and Improve; return the folder of the final model (a plain HF folder)."""
    # --- setup: prompts, reward and gold functions, metrics ---
    session = SampleFilterSession(cfg, "rest", sft.stage)
    policy = cfg.model.path

    for grow in range(cfg.grow_steps):
        # --- Grow: K samples per prompt from the current policy, scored ---
        grow_dir = session.output_dir / f"grow_{grow}"
        samples = session.sample(policy, session.rows, grow_dir, session.seed(grow))

        # --- Improve: SFT on the samples at or above each rising threshold ---
        for improve, value in enumerate(cfg.thresholds):
            quantile = cfg.threshold_mode == "quantile"
            threshold = quantile_threshold(samples.rewards, value) if quantile else value
            keep = at_or_above(samples.rewards, threshold)
            policy = session.finetune(
                policy, samples.records(keep), grow_dir / f"improve_{improve}"
            )
            record = {
                "grow_step": grow,
                "improve_step": improve,
                "threshold": threshold,
                "reward_mean": mean(samples.rewards),
                "kept": len(keep),
                "kept_fraction": len(keep) / len(samples),
                "kept_reward_mean": mean([samples.rewards[n] for n in keep]),
                "finished_fraction": mean([float(f) for f in samples.finished]),
            }
            if quantile:
                record["quantile"] = value
            if samples.gold is not None:
                record["gold_mean"] = mean(samples.gold)
                record["kept_gold_mean"] = mean([samples.gold[n] for n in keep])
            session.metrics.log(grow * cfg.improve_steps + improve + 1, record, prefix="rest/")

    # --- final model ---
    return session.finish(policy)
