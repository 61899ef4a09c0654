"""Vision-language reward model: fit r(image, x, y) to preference pairs with the Bradley-Terry
loss, as LLaVA-RLHF trains its reward model (Sun et al., 2023, arXiv:2309.14525).

    loss = sum over pairs [ -log σ(r_w - r_l - m) + λ · (r_w + r_l)² ] / (pairs in the step)

with r = w · h_T(image, x ⊕ y), the VLM's last hidden state at the last real token through a
linear head (`alignlab.models.vlm_reward`), and every option of `alignlab.recipes.rm`:
`reward.margin` (a column of the pair rows), `reward.soft_label` (soft Bradley-Terry on a
P(chosen preferred) column), `reward.center_rewards_coef`, bootstrap and ensembles. The loop
is the text RM loop itself (`alignlab.recipes.rm.train`: optimizer, resume, metrics, eval
accuracy and ECE, checkpoints). What differs is the data (TRL's vision preference rows,
`alignlab.data.vlm_pairs`, whose collate runs the processor on each side's images and makes
the (2B, T) batch, chosen first), the model (`load_vlm_reward_model`: the VLM + its head) and
`trainable`, which parts train (default: projector and LLM, the tower frozen, as in LLaVA's
stage 2; the head always trains). The final folder is the VLM's own folder with the processor
and the head beside it (`reward_head.safetensors`, `reward_head.json`); `VlmRewardFn` scores
RL rollouts with it.

Run: `alignlab vlm_rm --config vlm_rm_lab model.path=STAGE2 data.path=preference.jsonl`, or
under `torchrun --nproc_per_node N -m alignlab.cli vlm_rm ...` for FSDP2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignlab.config import ConfigError, ModelConfig, TrainConfig, section
from alignlab.data.vlm_pairs import collate_vlm_pairs
from alignlab.models.vlm import load_vlm_processor, trainable_summary
from alignlab.models.vlm_reward import load_vlm_reward_model, set_reward_trainable
from alignlab.recipes.rm import RMConfig, bootstrap_resample, label_pairs, train, train_ensemble
from alignlab.recipes.vlm_dpo import read_pairs
from alignlab.recipes.vlm_sft import TrainableConfig, VlmDataConfig, vlm_train_data
from alignlab.training import distributed, loop


@dataclasses.dataclass
class VlmRMConfig(RMConfig):
    """Reward model of an image-text-to-text model on TRL vision preference pairs:
    Bradley-Terry loss, optional margin, soft labels and centring."""

    model: ModelConfig = section(
        ModelConfig, "the image-text-to-text model the reward model starts from",
        disable_dropout=True,
    )  # fmt: skip
    data: VlmDataConfig = section(VlmDataConfig, "vision preference pairs (images, prompt, ...)")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/vlm_rm")
    trainable: TrainableConfig = section(
        TrainableConfig, "which parts of the model train (the head always does)",
        projector=True, llm=True,
    )  # fmt: skip

    def check(self) -> None:
        # not RMConfig.check: its checks are of the text data options; every VLM pair is kept
        # (a bad row stops the run), so margin and soft-label columns always line up
        if not self.data.completion_only_loss:
            raise ConfigError(
                "data.completion_only_loss=false: a reward model has no token loss (it reads "
                "the last token); leave it true"
            )


def run(cfg: VlmRMConfig) -> Path:
    """Train; return the folder of the final reward model (the VLM folder with its processor
    and head), or with reward.ensemble_size > 1 the output_dir holding member-i/final."""
    if cfg.reward.ensemble_size > 1:
        train_ensemble(cfg, cfg.reward.ensemble_size, cfg.reward.bootstrap, run_member=run)
        return Path(cfg.train.output_dir)
    runtime = distributed.init_runtime()
    folder = loop.start_run(cfg, runtime)

    # --- data (the processor of the starting model encodes it) ---
    processor = load_vlm_processor(cfg.model)
    rows, report = read_pairs(cfg.data, processor)
    label_pairs(rows, [row["chosen_row"].record for row in rows], cfg.reward)
    data = vlm_train_data(
        cfg, runtime, rows, lambda rows: collate_vlm_pairs(rows, processor, cfg.data.max_length),
        what="pairs", report=report,
        resample=(lambda rows: bootstrap_resample(rows, cfg.train.seed))
        if cfg.reward.bootstrap else None,
    )  # fmt: skip

    # --- model: the VLM and its head (a checkpoint's when resuming) ---
    model, _ = load_vlm_reward_model(
        cfg.model, runtime.device, processor, weights_from=folder.resume_from, seed=cfg.train.seed
    )
    counts = set_reward_trainable(model, **dataclasses.asdict(cfg.trainable))
    if runtime.is_main:
        print(trainable_summary(counts))
    return train(cfg, runtime, folder, model, processor, data, rewards=model, name="vlm_rm")
