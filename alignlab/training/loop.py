"""The pieces of a training step every recipe shares: set-up, autocast, the optimizer step,
the progress bar. Recipes stay linear scripts; what they would otherwise repeat lives here."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from alignlab.config import ConfigError, TrainConfig
from alignlab.data.report import row_length
from alignlab.training import distributed
from alignlab.training.batches import BatchSchedule
from alignlab.training.checkpoint import crash_point, save_hf_folder
from alignlab.training.distributed import Runtime
from alignlab.training.metrics import MetricsLogger
from alignlab.training.optim import AdamWInBackward
from alignlab.training.run_folder import RunFolder, open_run_folder


def start_run(config: Any, runtime: Runtime, parent: RunFolder | None = None) -> RunFolder:
    """Seed and check the output folder (nothing is written yet; `folder.resume_from` is the
    checkpoint to resume from, None for a fresh run). `parent`: the run this one is a stage of."""
    torch.manual_seed(config.train.seed)
    return open_run_folder(config, runtime, parent)


def open_metrics(folder: RunFolder, train_cfg: TrainConfig, start_step: int) -> MetricsLogger:
    """The run's first write: claim the folder, then open metrics.jsonl / TensorBoard."""
    folder.claim()
    return MetricsLogger(
        folder.path,
        enabled=folder.runtime.is_main,
        tensorboard=train_cfg.tensorboard,
        resume_step=start_step if folder.resume_from is not None else None,
    )


def autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(train_cfg: TrainConfig, runtime: Runtime) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    if train_cfg.mixed_precision != "fp16":
        return None
    return torch.amp.GradScaler(runtime.device.type)


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def optimizer_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    max_grad_norm: float,
) -> float:
    """Unscale (fp16), clip, step, zero the gradients, advance the schedule; return the
    gradient norm before clipping. A step with a non-finite gradient is skipped (the
    GradScaler skips it itself under fp16). With `AdamWInBackward` the updates already ran in
    backward: this closes the step and returns the norm of the gradients they used."""
    if isinstance(optimizer, AdamWInBackward):
        optimizer.step()
        scheduler.step()
        return float(optimizer.grad_norm)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    else:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif torch.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return float(grad_norm)


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,  # a log file gets a line per 30 s
    )


def end_of_step(
    done: int,
    total_steps: int,
    train_cfg: TrainConfig,
    metrics: MetricsLogger,
    evaluate: Callable[[], dict[str, float]] | None,
    save: Callable[[int], None],
) -> None:
    """After optimizer step `done`: eval and checkpoint on their cadence (the final model is
    saved separately), then the crash point the resume tests use."""
    if evaluate is not None and train_cfg.eval_every and done % train_cfg.eval_every == 0:
        metrics.log(done, evaluate(), prefix="eval/")
    if train_cfg.save_every and done % train_cfg.save_every == 0 and done < total_steps:
        save(done)
    crash_point("step", done)


def final_eval(
    total_steps: int,
    train_cfg: TrainConfig,
    metrics: MetricsLogger,
    evaluate: Callable[[], dict[str, float]] | None,
) -> None:
    """The closing eval, unless the cadence already ran one at the last step."""
    if evaluate is not None and (not train_cfg.eval_every or total_steps % train_cfg.eval_every):
        metrics.log(total_steps, evaluate(), prefix="eval/")


def hold_out(rows: list, fraction: float) -> tuple[list, list]:
    """The last `fraction` of `rows` as an eval set (rows keep the data file's order)."""
    split = int(len(rows) * (1 - fraction))
    if rows and not split:
        raise ConfigError(
            f"data.eval_fraction={fraction} of {len(rows)} rows leaves none to train on; "
            "lower data.eval_fraction (0 holds nothing out) or give more data"
        )
    return rows[:split], rows[split:]


def training_schedule(
    train_set: Sequence[dict], train_cfg: TrainConfig, runtime: Runtime
) -> tuple[BatchSchedule, int, int]:
    """(schedule, total optimizer steps, global batch = micro-batch x accumulation x processes)
    over the tokenized rows of `train_set`, grouped by their longest sequence when
    train.group_by_length."""
    global_batch = train_cfg.micro_batch_size * train_cfg.grad_accum * runtime.world_size
    lengths = [row_length(row) for row in train_set] if train_cfg.group_by_length else None
    schedule = BatchSchedule(len(train_set), global_batch, train_cfg.seed, lengths)
    return schedule, schedule.total_steps(train_cfg.epochs, train_cfg.max_steps), global_batch


def finish(metrics: MetricsLogger, runtime: Runtime, final_dir: Path, what: str = "model") -> None:
    """Close the metrics, say where the results are (rank 0), leave the process group."""
    metrics.close()
    if runtime.is_main:
        print(f"final {what}: {final_dir}\nmetrics: {metrics.path}")
    distributed.shutdown(runtime)


def save_final(
    cfg: Any,
    model: nn.Module,
    tokenizer: Any,
    runtime: Runtime,
    metrics: MetricsLogger,
    total_steps: int,
    evaluate: Callable[[], dict[str, float]] | None,
    saver: Callable[..., Any] = save_hf_folder,
    what: str = "model",
) -> Path:
    """The closing lines of a training recipe: final eval, the final folder (`cfg.final_dir`,
    default `<output_dir>/final`, written by `saver`), then `finish`; returns the folder."""
    final_eval(total_steps, cfg.train, metrics, evaluate)
    final_dir = Path(cfg.final_dir or Path(cfg.train.output_dir) / "final")
    lora = cfg.model.lora
    saver(final_dir, model, tokenizer, runtime, lora=lora, adapter=lora.save_adapter)
    finish(metrics, runtime, final_dir, what)
    return final_dir
