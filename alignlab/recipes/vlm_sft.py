"""Vision-language SFT, LLaVA's two stages: maximise log p(answer | image, prompt).

    loss = - sum_t log p(y_t | image, x, y_<t) / (number of trained tokens in the optimizer step)

LLaVA (Liu et al., 2023, "Visual Instruction Tuning", arXiv:2304.08485) trains in two stages
with the vision tower frozen throughout:
  stage 1, feature alignment: only the projector, on image-caption pairs
           (`--config vlm_sft_stage1`, trainable.projector=true);
  stage 2, visual instruction tuning: projector and LLM, on questions and instructions
           (`--config vlm_sft_stage2`, trainable.projector=true trainable.llm=true).
`trainable.tower / projector / llm` choose the parts (`alignlab.models.vlm.set_trainable`).

The loop is the text SFT loop (alignlab/recipes/sft.py) with the same shared pieces (batch
schedule, optimizer, schedule, checkpoints and resume, metrics); what differs is the data
(`alignlab.data.vlm.collate_vlm`, which runs the processor on each micro-batch's images) and
the forward, which feeds the images to the model. Checkpoints and the final folder are
plain HF folders with the processor beside the model. One process for now.

Run: `alignlab vlm_sft --config vlm_sft_stage1 model.path=FOLDER data.path=captions.jsonl`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.config import ConfigError, ModelConfig, TrainConfig, option, section
from alignlab.data.vlm import VlmRow, collate_vlm, encode_vlm_row, read_vlm_rows
from alignlab.models.lm import needs_full_logits
from alignlab.models.loading import check_positions
from alignlab.models.vlm import load_vlm, set_trainable
from alignlab.ops import IGNORE_INDEX, gather_log_probs, linear_log_probs, shift_labels
from alignlab.training import distributed, loop
from alignlab.training.batches import micro_batches
from alignlab.training.checkpoint import load_checkpoint_state, save_checkpoint
from alignlab.training.optim import build_optimizer, build_scheduler


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


class VisionTokenLogProbs(nn.Module):
    """forward(batch) -> (B, T) log p(next token) where the next label is trained, 0 elsewhere,
    as `alignlab.models.lm.TokenLogProbs` for a model that also takes images. The body
    (`model.model`, which merges the projected image features into the embeddings) runs
    once; only the trained positions go through the output head, chunk by chunk."""

    def __init__(self, model: nn.Module, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    @staticmethod
    def mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return shift_labels(batch["labels"]) != IGNORE_INDEX

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = shift_labels(batch["labels"])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        body = getattr(self.model, "model", None)
        head = self.model.get_output_embeddings()
        plain = body is None or getattr(head, "bias", None) is not None
        if plain or needs_full_logits(self.model):  # logits the head alone does not give
            logits = self.model(**inputs, use_cache=False).logits
            return gather_log_probs(logits, targets)
        selected = targets != IGNORE_INDEX
        hidden = body(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
        logps = linear_log_probs(hidden[selected], head.weight, targets[selected], self.chunk_size)
        out = torch.zeros(targets.shape, dtype=logps.dtype, device=hidden.device)
        return out.masked_scatter(selected, logps)


def read_rows(cfg: VlmDataConfig, processor: Any) -> tuple[list[VlmRow], list[dict]]:
    """The checked rows and their token ids ({"input_ids"}, for lengths and the schedule):
    every row is encoded once here, so a bad image or an over-long prompt stops the run
    before training (the image tensors are not kept; each batch encodes its rows again)."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path={cfg.path}: no such file (a local JSONL of TRL VLM rows)")
    rows = read_vlm_rows(path, max_records=cfg.max_examples)
    if not rows:
        raise ConfigError(f"data.path={cfg.path}: no rows")
    encoded = [
        {"input_ids": encode_vlm_row(r, processor, cfg.max_length, cfg.completion_only_loss)[
            "input_ids"
        ]}
        for r in rows
    ]  # fmt: skip
    return rows, encoded


def run(cfg: VlmSFTConfig) -> Path:
    """Train; return the folder of the final model (model + processor, a plain HF folder)."""
    # --- setup ---
    runtime = distributed.init_runtime()
    if runtime.distributed:
        raise ConfigError("vlm_sft runs in one process for now (no torchrun / FSDP2)")
    train_cfg = cfg.train
    output_dir = Path(train_cfg.output_dir)
    folder = loop.start_run(cfg, runtime)
    resume_from = folder.resume_from

    # --- model (the processor first: the data needs it) ---
    source = dataclasses.replace(cfg.model, path=str(resume_from)) if resume_from else cfg.model
    model, processor = load_vlm(source, device=runtime.device)
    counts = set_trainable(model, **dataclasses.asdict(cfg.trainable))
    print("trainable parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))

    # --- data ---
    rows, tokens = read_rows(cfg.data, processor)
    eval_rows: list[VlmRow] = []
    if cfg.data.eval_fraction > 0:
        rows, eval_rows = loop.hold_out(rows, cfg.data.eval_fraction)
        tokens = tokens[: len(rows)]
    print(f"{len(rows)} training rows, {len(eval_rows)} eval rows from {cfg.data.path}")
    longest = max(len(t["input_ids"]) for t in tokens)
    check_positions(cfg.model, longest, f"data.max_length={cfg.data.max_length}")
    schedule, total_steps, _ = loop.training_schedule(tokens, train_cfg, runtime)

    def batch_of(part: list[VlmRow]) -> dict[str, torch.Tensor]:
        batch = collate_vlm(part, processor, cfg.data.max_length, cfg.data.completion_only_loss)
        return {k: v.to(runtime.device) for k, v in batch.items()}

    # --- optimizer ---
    policy = VisionTokenLogProbs(model, chunk_size=train_cfg.loss_chunk_size)
    optimizer = build_optimizer(policy, train_cfg)  # the trainable parts only
    scheduler = build_scheduler(optimizer, total_steps, train_cfg)
    scaler = loop.grad_scaler(train_cfg, runtime)
    start_step, tokens_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_state(
            resume_from, optimizer, scheduler, runtime, scaler, root=policy
        )
        start_step, tokens_seen = state["step"], state["tokens_seen"]
    metrics = loop.open_metrics(folder, train_cfg, start_step)

    def evaluate() -> dict[str, float]:
        """Mean token NLL over the eval rows."""
        policy.eval()
        nll, count = 0.0, 0
        size = train_cfg.micro_batch_size
        for i in range(0, len(eval_rows), size):
            batch = batch_of(eval_rows[i : i + size])
            with torch.no_grad(), loop.autocast(runtime.device, train_cfg.mixed_precision):
                nll -= policy(batch).double().sum().item()
            count += int(policy.mask(batch).sum())
        policy.train()
        return {"loss": nll / max(count, 1)}

    def save(step: int) -> None:
        save_checkpoint(
            output_dir, step, model, processor, optimizer, scheduler, runtime,
            scaler=scaler, keep=train_cfg.keep_checkpoints, root=policy,
            trainer_state={"tokens_seen": tokens_seen, "total_steps": total_steps},
        )  # fmt: skip

    # --- loop ---
    policy.train()
    progress = loop.progress_bar(
        total_steps, start_step, "vlm_sft", enabled=runtime.is_main and train_cfg.progress
    )
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        batches = [
            batch_of([rows[i] for i in ids])
            for ids in micro_batches(
                schedule.step_indices(step), runtime, train_cfg.micro_batch_size,
                train_cfg.grad_accum,
            )
        ]  # fmt: skip
        step_tokens = float(sum(int(policy.mask(b).sum()) for b in batches))
        step_loss = 0.0
        for batch in batches:
            with loop.autocast(runtime.device, train_cfg.mixed_precision):
                token_logps = policy(batch)  # (B, T), 0 where not trained
            loss = -token_logps.sum() / max(step_tokens, 1.0)  # as text SFT: per step token
            step_loss += loss.item()
            loop.backward(loss, scaler)
        grad_norm = loop.optimizer_step(
            policy, optimizer, scheduler, scaler, train_cfg.max_grad_norm
        )
        tokens_seen += int(step_tokens)
        window_tokens += int(step_tokens)
        done = step + 1

        # --- metrics and checkpoints ---
        if done % train_cfg.log_every == 0 or done == total_steps:
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            metrics.log(
                done,
                {
                    "loss": step_loss,
                    "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens_per_s,
                    "tokens_seen": tokens_seen,
                    "epoch": schedule.epoch_at(done),
                },
                prefix="train/",
            )
            progress.set_postfix(loss=f"{step_loss:.4f}", refresh=False)
            window_start, window_tokens = time.perf_counter(), 0
        progress.update(1)
        loop.end_of_step(
            done, total_steps, train_cfg, metrics, evaluate if eval_rows else None, save
        )
    progress.close()

    # --- final model (the processor saved beside it) ---
    evaluate_fn = evaluate if eval_rows else None
    return loop.save_final(cfg, model, processor, runtime, metrics, total_steps, evaluate_fn)
