"""Iterative (batch-online) DPO: each round samples K responses per prompt from the current
policy, a labeller ranks them, and DPO trains the policy on best-vs-worst pairs (Xiong et al.
2024, arXiv:2312.11456; the online-AI-feedback loop of Guo et al. 2024, arXiv:2402.04792).

Round r = 1..R, π_0 = model.path (`alignlab.recipes.rounds`):

    y_1..y_K ~ π_{r-1}(· | x)                   for x in the round's prompts_per_round prompts
    P(y_a ≻ y_b | x)                            the labeller: a reward (σ(r_a - r_b)), a judge
                                                (both orders averaged), or simulated annotators
    (y_w, y_l) = (most wins, fewest wins)       pairs=best_vs_worst (or all labelled pairs)
    π_r = argmin_π  E[-log σ(β h)],   h = log π(y_w)/π_ref(y_w) - log π(y_l)/π_ref(y_l)
                                                from π_{r-1}; π_ref = π_0 (reference=initial)
                                                or π_{r-1} (reference=previous)

Guo et al.'s online DPO draws two responses per prompt from the current policy at every
training step, inside one run; here the policy is frozen while a round's prompts are sampled
and labelled, then trained on them ("iterative", batch online, as Xiong et al.). Small
prompts_per_round with many rounds approaches the per-step loop, at a model load per stage.

Run: `alignlab online_dpo --config online_dpo_lab model.path=runs/demo/sft/final
data.path=lab_data/prompts.jsonl`. docs/methods/online_dpo.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignlab.aif.comparisons import Comparisons
from alignlab.aif.labeller import LabellerConfig, build_labeller
from alignlab.config import option, section
from alignlab.recipes.rounds import RoundOptions, check_dpo_stage, run_rounds
from alignlab.recipes.stages import input_stamp


@dataclasses.dataclass
class OnlineDPOConfig(RoundOptions):
    """Iterative DPO: per round, sample the current policy, label (a reward, a judge or
    simulated annotators), best vs worst, DPO from the current policy."""

    labeller: LabellerConfig = section(
        LabellerConfig, "who ranks each prompt's samples: a reward or a judge", source="reward"
    )
    output_dir: str = option("runs/online_dpo", "the pipeline's folder: round_1/, ..., final/")

    def check(self) -> None:
        super().check()
        self.labeller.check()


def run(cfg: OnlineDPOConfig) -> Path:
    """Run the rounds not done yet; output_dir/final, the last round's model."""
    cfg.check()
    check_dpo_stage(cfg)
    labeller_key = [dataclasses.asdict(cfg.labeller)]
    if cfg.labeller.source == "judge":
        labeller_key.append(input_stamp(cfg.labeller.judge))

    def label(policy: str, prompts: list, samples: list, extras: list) -> Comparisons:
        # loaded per round and freed after: a judge or RM holds no memory while DPO trains
        return build_labeller(cfg.labeller).compare(prompts, samples, extras)

    return run_rounds(
        cfg, Path(cfg.output_dir), label, lambda policy: labeller_key,
        gold=cfg.labeller.gold, reward_timeout=cfg.labeller.reward_timeout,
    )  # fmt: skip
