"""Vision-language preference optimisation: DPO and its family on (image, prompt, chosen,
rejected) pairs, against hallucination as in RLHF-V (Yu et al., 2023, arXiv:2312.00849) and
LLaVA-RLHF's factual preferences (Sun et al., 2023, arXiv:2309.14525).

    dpo:  -log σ(β [(log π(y_w | image, x) - log π_ref(y_w | image, x))
                   - (log π(y_l | image, x) - log π_ref(y_l | image, x))])

and every other loss of `alignlab.recipes.dpo` (`loss=ipo | slic | orpo | simpo`,
`label_smoothing` for cDPO, `nll_weight` for RPO) with the same formulas: the loop is the
text DPO loop itself (`alignlab.recipes.dpo.train`). What differs is the data (rows in TRL's
vision preference format, `alignlab.data.vlm_pairs`, whose collate runs the processor on each
side's images), the loading (`alignlab.models.vlm.load_vlm`, the processor saved beside the
model) and `trainable`, which parts train (default: projector and LLM, the tower frozen, as
in LLaVA's stage 2). The reference is the starting model (`reference.mode=precomputed`: one
pass before training, cached in output_dir, fingerprinted by the tokens and the image bytes;
or `model`, a frozen copy run at each step).

Run: `alignlab vlm_dpo --config vlm_dpo_lab model.path=STAGE2 data.path=preference.jsonl`, or
under `torchrun --nproc_per_node N -m alignlab.cli vlm_dpo ...` for FSDP2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError, ModelConfig, TrainConfig, section
from alignlab.data.report import DataReport
from alignlab.data.vlm import collate_vlm
from alignlab.data.vlm_pairs import collate_vlm_pairs, encode_vlm_pairs, read_vlm_pairs
from alignlab.models.vlm import (
    load_vlm,
    load_vlm_for_training,
    load_vlm_processor,
    trainable_summary,
)
from alignlab.recipes.dpo import DPOConfig, prepare_reference, train
from alignlab.recipes.vlm_sft import (
    TrainableConfig,
    VlmDataConfig,
    read_data_file,
    require_rows,
    vlm_train_data,
)
from alignlab.training import distributed, loop


@dataclasses.dataclass
class VlmDPOConfig(DPOConfig):
    """Paired preference optimisation (DPO, cDPO, IPO, SLiC-HF, ORPO, SimPO) of an
    image-text-to-text model on TRL vision preference pairs."""

    model: ModelConfig = section(
        ModelConfig, "the image-text-to-text model to train", disable_dropout=True
    )
    data: VlmDataConfig = section(VlmDataConfig, "vision preference pairs (images, prompt, ...)")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/vlm_dpo")
    trainable: TrainableConfig = section(
        TrainableConfig, "which parts of the model train", projector=True, llm=True
    )

    def check(self) -> None:
        super().check()
        if not self.data.completion_only_loss:
            raise ConfigError(
                "data.completion_only_loss=false: preference pairs compare their responses "
                "only (the prompt and image are shared); leave it true"
            )


def read_pairs(cfg: VlmDataConfig, processor: Any) -> tuple[list[dict[str, Any]], DataReport]:
    """The encoded pairs (`encode_vlm_pairs`) and the report of what was read and skipped."""
    report = DataReport()
    pairs = read_data_file(cfg, read_vlm_pairs, "pairs", report)
    encoded = encode_vlm_pairs(pairs, processor, cfg.max_length, cfg.on_bad_example, report)
    return require_rows(encoded, "pairs", cfg, report), report


def run(cfg: VlmDPOConfig) -> Path:
    """Train; return the folder of the final model (model + processor, a plain HF folder)."""
    runtime = distributed.init_runtime()
    folder = loop.start_run(cfg, runtime)
    distributed.barrier(runtime)

    # --- data (the processor of the starting model encodes it) ---
    processor = load_vlm_processor(cfg.model)
    max_length = cfg.data.max_length
    pairs, report = read_pairs(cfg.data, processor)
    data = vlm_train_data(
        cfg, runtime, pairs,
        lambda rows: collate_vlm_pairs(rows, processor, max_length), what="pairs", report=report,
    )  # fmt: skip

    # --- reference, then the policy ---
    reference = prepare_reference(
        cfg, runtime, folder, processor, data,
        load=lambda model_cfg, device: load_vlm(model_cfg, device, processor)[0],
        collate_fn=lambda rows: collate_vlm([r["row"] for r in rows], processor, max_length),
    )  # fmt: skip
    model, _, counts = load_vlm_for_training(
        cfg.model, **dataclasses.asdict(cfg.trainable), device=runtime.device,
        processor=processor, weights_from=folder.resume_from,
    )  # fmt: skip
    if runtime.is_main:
        print(trainable_summary(counts))
    return train(cfg, runtime, folder, model, processor, data, reference)
