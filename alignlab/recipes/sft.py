"""Supervised fine-tuning: maximise log p(completion | prompt) on demonstrations.

    loss = - sum_t log p(y_t | x, y_<t) / (number of trained tokens in the optimizer step)

Normalising by the token count of the whole optimizer step (all micro-batches, all
processes) makes gradient accumulation and data parallelism exact: 4 x 2 equals 8, and
2 processes x b equals 1 process x 2b, up to float summation order.

Run: `alignlab sft --config sft_tiny.yaml train.lr=1e-4`, or under
`torchrun --nproc_per_node N -m alignlab.cli sft ...` for FSDP2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from alignlab.config import DataConfig, ModelConfig, TrainConfig, option, section, to_dict
from alignlab.data.collate import collate
from alignlab.data.tokenize import build_sft_dataset
from alignlab.fileio import atomic_write_text
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.training import distributed
from alignlab.training.batches import BatchSchedule, micro_batches
from alignlab.training.checkpoint import (
    crash_point,
    latest_checkpoint,
    load_checkpoint_state,
    save_checkpoint,
    save_hf_folder,
)
from alignlab.training.metrics import MetricsLogger
from alignlab.training.optim import build_optimizer, build_scheduler


@dataclasses.dataclass
class SFTConfig:
    """Supervised fine-tuning on prompt-completion, conversational or plain-text data."""

    model: ModelConfig = section(ModelConfig, "the model to fine-tune")
    data: DataConfig = section(DataConfig, "training data")
    train: TrainConfig = section(TrainConfig, "optimisation loop")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")


def autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def run(cfg: SFTConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    # --- setup ---
    runtime = distributed.init_runtime()
    train_cfg = cfg.train
    output_dir = Path(train_cfg.output_dir)
    torch.manual_seed(train_cfg.seed)
    resume_from = latest_checkpoint(output_dir) if train_cfg.resume else None
    if runtime.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if train_cfg.resume:
            print(f"resuming from {resume_from}" if resume_from else "resume: no checkpoint yet")

    # --- data ---
    tokenizer = load_tokenizer(cfg.model)
    train_set, report = build_sft_dataset(cfg.data, tokenizer)
    eval_set: list[dict[str, list[int]]] = []
    if cfg.data.eval_path:
        eval_set, _ = build_sft_dataset(cfg.data, tokenizer, path=cfg.data.eval_path)
    elif cfg.data.eval_fraction > 0:
        split = int(len(train_set) * (1 - cfg.data.eval_fraction))
        train_set, eval_set = train_set[:split], train_set[split:]
    if runtime.is_main:
        print(report.summary())
    global_batch = train_cfg.micro_batch_size * train_cfg.grad_accum * runtime.world_size
    schedule = BatchSchedule(len(train_set), global_batch, train_cfg.seed)
    total_steps = schedule.total_steps(train_cfg.epochs, train_cfg.max_steps)

    # --- model ---
    model = load_model(cfg.model, tokenizer, weights_from=resume_from, device=runtime.device)
    policy = TokenLogProbs(model, chunk_size=train_cfg.loss_chunk_size)
    if runtime.distributed:
        distributed.shard_model(policy, model, runtime)
    optimizer = build_optimizer(policy, train_cfg)
    scheduler = build_scheduler(optimizer, total_steps, train_cfg)
    scaler = (
        torch.amp.GradScaler(runtime.device.type) if train_cfg.mixed_precision == "fp16" else None
    )
    start_step, tokens_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_state(
            resume_from, optimizer, scheduler, runtime, scaler, root=policy
        )
        start_step, tokens_seen = state["step"], state["tokens_seen"]
    metrics = MetricsLogger(
        output_dir,
        enabled=runtime.is_main,
        tensorboard=train_cfg.tensorboard,
        resume_step=start_step if resume_from is not None else None,
    )

    def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(runtime.device) for k, v in batch.items()}

    def evaluate() -> float:
        """Mean token NLL over the eval set, each process taking every world_size-th batch."""
        policy.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=runtime.device)
        size = train_cfg.micro_batch_size
        batches = [eval_set[i : i + size] for i in range(0, len(eval_set), size)]
        # every process runs the same number of forwards: FSDP2 forwards are collective
        rounds = -(-len(batches) // runtime.world_size)
        for i in range(runtime.rank, rounds * runtime.world_size, runtime.world_size):
            batch = to_device(collate(batches[i % len(batches)], tokenizer.pad_token_id))
            with torch.no_grad(), autocast(runtime.device, train_cfg.mixed_precision):
                token_logps = policy(batch)
            if i < len(batches):
                totals[0] -= token_logps.double().sum()
                totals[1] += policy.mask(batch).sum()
        totals = distributed.all_reduce_sum(totals, runtime)
        distributed.reshard(policy)
        policy.train()
        return (totals[0] / totals[1].clamp(min=1)).item()

    def save(step: int) -> None:
        save_checkpoint(
            output_dir, step, model, tokenizer, optimizer, scheduler, runtime,
            lora=cfg.model.lora, scaler=scaler, keep=train_cfg.keep_checkpoints, root=policy,
            trainer_state={"tokens_seen": tokens_seen, "total_steps": total_steps},
        )  # fmt: skip

    # --- loop ---
    policy.train()
    progress = tqdm(
        total=total_steps,
        initial=start_step,
        desc="sft",
        disable=not (runtime.is_main and train_cfg.progress),
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,  # a log file gets a line per 30 s
    )
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        batches = [
            to_device(collate([train_set[i] for i in ids], tokenizer.pad_token_id))
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
            with autocast(runtime.device, train_cfg.mixed_precision):
                token_logps = policy(batch)  # (B, T), 0 where not trained
            # sum over this micro-batch / tokens of the whole step; x world_size because FSDP
            # averages gradients over processes while we want their sum
            loss = -token_logps.sum() / max(step_tokens, 1.0)
            step_loss += loss.detach().double()
            loss = loss * runtime.world_size
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(policy.parameters(), train_cfg.max_grad_norm)
            if train_cfg.max_grad_norm > 0
            else torch.tensor(0.0)
        )
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        elif torch.isfinite(grad_norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
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
                    "grad_norm": float(grad_norm),
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
        if eval_set and train_cfg.eval_every and done % train_cfg.eval_every == 0:
            metrics.log(done, {"loss": evaluate()}, prefix="eval/")
        if train_cfg.save_every and done % train_cfg.save_every == 0 and done < total_steps:
            save(done)
        crash_point("step", done)
    progress.close()

    # --- final model ---
    if eval_set and (not train_cfg.eval_every or total_steps % train_cfg.eval_every):
        metrics.log(total_steps, {"loss": evaluate()}, prefix="eval/")
    final_dir = Path(cfg.final_dir or output_dir / "final")
    save_hf_folder(
        final_dir,
        model,
        tokenizer,
        runtime,
        lora=cfg.model.lora,
        adapter=cfg.model.lora.save_adapter,
    )
    metrics.close()
    if runtime.is_main:
        print(f"final model: {final_dir}\nmetrics: {metrics.path}")
    distributed.shutdown(runtime)
    return final_dir
