"""Vision-language SFT, LLaVA's two stages: maximise log p(answer | image, prompt).

    loss = - sum_t log p(y_t | image, x, y_<t) / (number of trained tokens in the optimizer step)

LLaVA (Liu et al., 2023, "Visual Instruction Tuning", arXiv:2304.08485) trains in two stages
with the vision tower frozen throughout:
  stage 1, feature alignment: only the projector, on image-caption pairs
           (`--config vlm_sft_stage1`, trainable.projector=true);
  stage 2, visual instruction tuning: projector and LLM, on questions and instructions
           (`--config vlm_sft_stage2`, trainable.projector=true trainable.llm=true).
`trainable.tower / projector / llm` choose the parts (`alignlab.models.vlm.set_trainable`).

The loop is the text SFT loop itself (`alignlab.recipes.sft.train`, with
`alignlab.models.lm.TokenLogProbs`, which passes a batch's images to the model): only the
data differs, rows whose `collate` (`alignlab.data.vlm.collate_vlm`) runs the processor on
each micro-batch's images. Checkpoints and the final folder are plain HF folders with the
processor beside the model; under torchrun the model is FSDP2-sharded as for text.

Run: `alignlab vlm_sft --config vlm_sft_stage1 model.path=FOLDER data.path=captions.jsonl`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignlab.config import ConfigError, ModelConfig, TrainConfig, option, section
from alignlab.data.report import DataReport, longest_sequence
from alignlab.data.vlm import VlmRow, collate_vlm, encode_vlm_row, keep_good, read_vlm_rows
from alignlab.models.loading import check_positions
from alignlab.models.vlm import load_vlm_for_training, trainable_summary
from alignlab.recipes.sft import train
from alignlab.training import distributed, loop
from alignlab.training.batches import TrainData


@dataclasses.dataclass
class VlmDataConfig:
    """Image conversations in TRL's VLM format (`alignlab.data.vlm`)."""

    path: str = option(
        "", "local JSONL/JSON/Parquet file of TRL VLM rows (images relative to it)", kind="data"
    )
    eval_fraction: float = option(0.0, "fraction of `path` held out for eval loss", min=0, max=0.5)
    max_length: int = option(
        1024, "max tokens per sequence, image tokens included (the end is cut)", min=1
    )
    completion_only_loss: bool = option(True, "loss only on assistant tokens")
    max_examples: int = option(0, "use at most this many records; 0 = all", min=0)
    on_bad_example: str = option(
        "error",
        "bad row (missing image, unreadable image, too long for its image tokens, malformed "
        "line): stop with an error or skip and count",
        choices=("error", "skip"),
    )

    def check(self) -> None:
        if not self.path:
            raise ConfigError("data.path is required: a JSONL file of TRL VLM rows")


@dataclasses.dataclass
class TrainableConfig:
    """Which parts of the model train (LLaVA stage 1: projector; stage 2: projector + llm)."""

    tower: bool = option(False, "train the vision tower (LLaVA keeps it frozen)")
    projector: bool = option(True, "train the multi-modal projector")
    llm: bool = option(False, "train the language model and its output head")

    def check(self) -> None:
        if not (self.tower or self.projector or self.llm):
            raise ConfigError("trainable: set at least one of tower, projector, llm to true")


@dataclasses.dataclass
class VlmSFTConfig:
    """Vision-language SFT (LLaVA stage 1 or 2) on TRL image-conversation data."""

    model: ModelConfig = section(ModelConfig, "the image-text-to-text model to fine-tune")
    data: VlmDataConfig = section(VlmDataConfig, "training data")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/vlm_sft")
    trainable: TrainableConfig = section(TrainableConfig, "which parts of the model train")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")


def read_data_file(
    cfg: VlmDataConfig, reader: Callable[..., list], what: str, report: DataReport
) -> list:
    """`reader(data.path, ...)` with data.max_examples and data.on_bad_example, skips counted in
    `report`; a ConfigError on `data.path` when the file is missing or holds no good row
    (`what`: "rows" or "pairs")."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path={cfg.path}: no such file (a local JSONL of TRL VLM {what})")
    rows = reader(
        path, max_records=cfg.max_examples, on_bad_example=cfg.on_bad_example, report=report
    )
    if not rows:
        raise ConfigError(f"data.path={cfg.path}: no {what} ({report.summary()})")
    return rows


def require_rows(rows: list, what: str, cfg: VlmDataConfig, report: DataReport) -> list:
    """`rows` (encoded, the skipped ones left out), counted as used in `report`; a
    ConfigError when none is left."""
    report.used = len(rows)
    if not rows:
        raise ConfigError(f"data.path={cfg.path}: no usable {what} ({report.summary()})")
    return rows


def read_rows(cfg: VlmDataConfig, processor: Any) -> tuple[list[dict[str, Any]], DataReport]:
    """The checked rows as {"input_ids", "row"} and the report of what was read: every row is
    encoded once here, so a bad image or an over-long prompt stops the run (or is skipped)
    before training, and the token ids give the schedule its lengths (the image tensors are
    not kept; each batch encodes its rows again)."""
    report = DataReport()
    rows = read_data_file(cfg, read_vlm_rows, "rows", report)

    def encode(row: VlmRow) -> dict[str, Any]:
        ids = encode_vlm_row(row, processor, cfg.max_length, cfg.completion_only_loss)
        return {"input_ids": ids["input_ids"], "row": row}

    return require_rows(
        keep_good(rows, encode, cfg.on_bad_example, report), "rows", cfg, report
    ), report


def vlm_train_data(
    cfg: Any,
    runtime: distributed.Runtime,
    rows: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    what: str = "rows",
    resample: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    report: DataReport | None = None,
) -> TrainData:
    """The set-up every vision recipe shares between its encoded `rows` and its loop: the
    last `data.eval_fraction` held out, the training part `resample`d (a bootstrap) if asked,
    the counts printed (rank 0), the longest sequence checked against the model's positions.
    `cfg` has the `model` and `data` (VlmDataConfig) sections."""
    train_set, eval_set = rows, []
    if cfg.data.eval_fraction > 0:
        train_set, eval_set = loop.hold_out(rows, cfg.data.eval_fraction)
    if resample is not None:
        train_set = resample(train_set)
    if runtime.is_main:
        if report is not None:
            print(report.summary())
        print(f"{len(train_set)} training {what}, {len(eval_set)} eval {what} from {cfg.data.path}")
    longest = longest_sequence(train_set + eval_set)
    check_positions(cfg.model, longest, f"data.max_length={cfg.data.max_length}")
    return TrainData(train_set, eval_set, collate)


def run(cfg: VlmSFTConfig) -> Path:
    """Train; return the folder of the final model (model + processor, a plain HF folder)."""
    runtime = distributed.init_runtime()
    folder = loop.start_run(cfg, runtime)

    # --- model (the processor first: the data needs it) ---
    model, processor, counts = load_vlm_for_training(
        cfg.model, **dataclasses.asdict(cfg.trainable), device=runtime.device,
        weights_from=folder.resume_from,
    )  # fmt: skip
    if runtime.is_main:
        print(trainable_summary(counts))

    # --- data ---
    rows, report = read_rows(cfg.data, processor)
    data = vlm_train_data(
        cfg, runtime, rows,
        lambda rows: collate_vlm(
            [r["row"] for r in rows], processor, cfg.data.max_length,
            cfg.data.completion_only_loss,
        ),
        report=report,
    )  # fmt: skip
    return train(cfg, runtime, folder, model, processor, data, name="vlm_sft")
