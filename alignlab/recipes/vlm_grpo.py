"""Vision-language GRPO: group-relative policy optimisation of an image-text-to-text model on
prompts with images, rewarded by a function, a gold (the shapes world's:
`alignlab.lab.shapes.reward:gold_reward`) or a vision reward model.

    A_i = (r_i - mean(r)) / (std(r) + 1e-4),  r_i the reward of answer o_i to (image, q)
    ℓ_t = max(-A ρ_t, -A clip(ρ_t, 1 - ε, 1 + ε)) + β k3(π_θ, π_ref)_t

with every formula and option of `alignlab.recipes.grpo` (Shao et al. 2024, arXiv:2402.03300;
`dr_grpo`): the step is that recipe's, run by `alignlab.rl.run.RLRun` in its vision mode,
which loads the model with its processor (`alignlab.models.vlm.load_vlm`), freezes the parts
`trainable` leaves out (default: the tower, as in LLaVA) and samples with the prompts' images
(`alignlab.models.vlm_generation.generate_vlm`); every later forward gets the images from the
rollout (`alignlab.rl.rollout.Rollout.batch`). Prompt rows are TRL's vision prompt rows
({"images": [...], "prompt": [user turn with {"type": "image"}]}); their other keys go to the
reward function, with `images` as absolute paths.

Run: `alignlab vlm_grpo --config vlm_grpo_lab model.path=STAGE2 data.path=train_prompts.jsonl`,
or under `torchrun --nproc_per_node N -m alignlab.cli vlm_grpo ...` for FSDP2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignlab.config import ModelConfig, TrainConfig, section
from alignlab.recipes import grpo
from alignlab.recipes.vlm_sft import TrainableConfig


@dataclasses.dataclass
class VlmGRPOConfig(grpo.GRPOConfig):
    """GRPO / Dr. GRPO of an image-text-to-text model on prompts with images."""

    model: ModelConfig = section(
        ModelConfig, "the image-text-to-text policy to train", disable_dropout=True
    )
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/vlm_grpo")
    trainable: TrainableConfig = section(
        TrainableConfig, "which parts of the model train", projector=True, llm=True
    )


def run(cfg: VlmGRPOConfig) -> Path:
    """Train; return the folder of the final model (model + processor, a plain HF folder)."""
    return grpo.run(cfg, vision=True)
