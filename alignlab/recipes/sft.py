"""Supervised fine-tuning: maximise log p(completion | prompt) on demonstrations.

    loss = - sum_t log p(y_t | x, y_<t) / (number of trained tokens in the optimizer step)

Normalising by the token count of the whole optimizer step (all micro-batches, all
processes) makes gradient accumulation and data parallelism exact: 4 x 2 equals 8, and
2 processes x b equals 1 process x 2b, up to float summation order.

Run: `alignlab sft --config sft_lab train.lr=1e-4`, or under
`torchrun --nproc_per_node N -m alignlab.cli sft ...` for FSDP2.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.config import DataConfig, ModelConfig, TrainConfig, check_all, option, section
from alignlab.data.collate import collate
from alignlab.data.report import longest_sequence
from alignlab.data.tokenize import build_sft_dataset
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import check_positions, load_model, load_tokenizer
from alignlab.training import distributed, loop
from alignlab.training.batches import TrainData, eval_rounds, micro_batches
from alignlab.training.checkpoint import (
    load_checkpoint_state,
    save_checkpoint,
)
from alignlab.training.optim import build_optimizer, build_scheduler
from alignlab.training.run_folder import RunFolder


@dataclasses.dataclass
class SFTConfig:
    """Supervised fine-tuning on prompt-completion, conversational or plain-text data."""

    model: ModelConfig = section(ModelConfig, "the model to fine-tune")
    data: DataConfig = section(DataConfig, "training data")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/sft")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")


def stage(model: ModelConfig, data: DataConfig, train: TrainConfig, parent: RunFolder) -> Path:
    """SFT as a stage of another run (ReST, RAFT): the config from its sections, checked."""
    cfg = SFTConfig(model=model, data=data, train=train)
    check_all(cfg)
    return run(cfg, parent)


def run(cfg: SFTConfig, parent: RunFolder | None = None) -> Path:
    """Train; return the folder of the final model (a plain HF folder). `parent`: the run this
    SFT is a stage of (Chain of Hindsight, ReST, RAFT), which owns its output folder."""
    runtime = distributed.init_runtime()
    folder = loop.start_run(cfg, runtime, parent)

    # --- data ---
    tokenizer = load_tokenizer(cfg.model)
    train_set, report = build_sft_dataset(cfg.data, tokenizer)
    eval_set: list[dict[str, list[int]]] = []
    if cfg.data.eval_path:
        eval_set, _ = build_sft_dataset(cfg.data, tokenizer, path=cfg.data.eval_path)
    elif cfg.data.eval_fraction > 0:
        train_set, eval_set = loop.hold_out(train_set, cfg.data.eval_fraction)
    if runtime.is_main:
        print(report.summary())
    longest = longest_sequence(train_set + eval_set)
    check_positions(cfg.model, longest, f"data.max_length={cfg.data.max_length}")
    data = TrainData(train_set, eval_set, lambda rows: collate(rows, tokenizer.pad_token_id))

    # --- model ---
    model = load_model(cfg.model, tokenizer, weights_from=folder.resume_from, device=runtime.device)
    return train(cfg, runtime, folder, model, tokenizer, data)


def train(
    cfg: Any,
    runtime: distributed.Runtime,
    folder: RunFolder,
    model: nn.Module,
    tokenizer: Any,
    data: TrainData,
    name: str = "sft",
) -> Path:
    """The SFT loop over `data` for a loaded `model` (resumed weights already in it, when
    `folder.resume_from`): optimizer, schedule, resume, metrics, eval, checkpoints (with
    `tokenizer`, a tokenizer or a processor, beside the model) and the final folder. `cfg`
    has the `model`, `train` and `final_dir` of `SFTConfig`."""
    train_cfg = cfg.train
    output_dir = Path(train_cfg.output_dir)
    resume_from = folder.resume_from
    train_set, eval_set = data.train, data.eval
    schedule, total_steps, _ = loop.training_schedule(train_set, train_cfg, runtime)
    policy = TokenLogProbs(model, chunk_size=train_cfg.loss_chunk_size)
    if runtime.distributed:
        distributed.shard_model(policy, model, runtime)
    optimizer = build_optimizer(policy, train_cfg)
    scheduler = build_scheduler(optimizer, total_steps, train_cfg)
    scaler = loop.grad_scaler(train_cfg, runtime)
    start_step, tokens_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_state(
            resume_from, optimizer, scheduler, runtime, scaler, root=policy
        )
        start_step, tokens_seen = state["step"], state["tokens_seen"]
    metrics = loop.open_metrics(folder, train_cfg, start_step)

    def batch_of(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {k: v.to(runtime.device) for k, v in data.collate(rows).items()}

    def evaluate() -> dict[str, float]:
        """Mean token NLL over the eval set, each process taking every world_size-th batch."""
        policy.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=runtime.device)
        size = train_cfg.micro_batch_size
        batches = [eval_set[i : i + size] for i in range(0, len(eval_set), size)]
        for i in eval_rounds(len(batches), runtime):  # the same count on every process
            batch = batch_of(batches[i % len(batches)])
            with torch.no_grad(), loop.autocast(runtime.device, train_cfg.mixed_precision):
                token_logps = policy(batch)
            if i < len(batches):
                totals[0] -= token_logps.double().sum()
                totals[1] += policy.mask(batch).sum()
        totals = distributed.all_reduce_sum(totals, runtime)
        distributed.reshard(policy)
        policy.train()
        return {"loss": (totals[0] / totals[1].clamp(min=1)).item()}

    def save(step: int) -> None:
        save_checkpoint(
            output_dir, step, model, tokenizer, optimizer, scheduler, runtime,
            lora=cfg.model.lora, scaler=scaler, keep=train_cfg.keep_checkpoints, root=policy,
            trainer_state={"tokens_seen": tokens_seen, "total_steps": total_steps},
        )  # fmt: skip

    # --- loop ---
    policy.train()
    progress = loop.progress_bar(
        total_steps, start_step, name, enabled=runtime.is_main and train_cfg.progress
    )
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        batches = [
            batch_of([train_set[i] for i in ids])
            for ids in micro_batches(
                schedule.step_indices(step),
                runtime,
                train_cfg.micro_batch_size,
                train_cfg.grad_accum,
            )
        ]
        local_tokens = sum(int(policy.mask(b).sum()) for b in batches)
        step_tokens = distributed.all_reduce_sum(
            torch.tensor(float(local_tokens), device=runtime.device), runtime
        ).item()
        step_loss = torch.zeros((), dtype=torch.float64, device=runtime.device)
        for batch in batches:
            with loop.autocast(runtime.device, train_cfg.mixed_precision):
                token_logps = policy(batch)  # (B, T), 0 where not trained
            # sum over this micro-batch / tokens of the whole step; x world_size because FSDP
            # averages gradients over processes while we want their sum
            loss = -token_logps.sum() / max(step_tokens, 1.0)
            step_loss += loss.detach().double()
            loss = loss * runtime.world_size
            loop.backward(loss, scaler)
        grad_norm = loop.optimizer_step(
            policy, optimizer, scheduler, scaler, train_cfg.max_grad_norm
        )
        step_loss = distributed.all_reduce_sum(step_loss, runtime).item()
        tokens_seen += int(step_tokens)
        window_tokens += int(step_tokens)
        done = step + 1

        # --- metrics and checkpoints ---
        if done % train_cfg.log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / max(elapsed, 1e-9)
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
            progress.set_postfix(
                loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False
            )
            window_start, window_tokens = time.perf_counter(), 0
        progress.update(1)
        loop.end_of_step(
            done, total_steps, train_cfg, metrics, evaluate if eval_set else None, save
        )
    progress.close()

    # --- final model ---
    evaluate_fn = evaluate if eval_set else None
    return loop.save_final(cfg, model, tokenizer, runtime, metrics, total_steps, evaluate_fn)
