"""Reward modelling: fit a scalar reward to preference pairs with the Bradley-Terry loss.

    loss = sum over pairs [ -log σ(r_w - r_l - m) + λ · (r_w + r_l)² ] / (pairs in the step)

r_w, r_l: rewards of the chosen and rejected response (`alignlab.models.reward`, read at the
last real token); m: an optional per-pair margin from a data column (`reward.margin`, times
`reward.margin_scale`). With `reward.soft_label=COLUMN` the pair's term is instead the soft
Bradley-Terry cross-entropy -p log σ(r_w - r_l) - (1 - p) log σ(r_l - r_w) against the
column's P(chosen preferred) p (a judge's probability: RL-CAI, distilled RLAIF); λ: `reward.center_rewards_coef`, the reward-centring term of
Eisenstein et al. 2023 that pins the mean reward near 0 (BT alone is invariant to a shift).
Chosen and rejected go through one forward as a (2B, T) batch. Normalising by the pair count
of the whole optimizer step (all micro-batches, all processes) makes gradient accumulation and
data parallelism exact, as in SFT.

Ensembles: `reward.bootstrap=true` trains on a bootstrap resample of the training pairs
(seeded by train.seed); `reward.ensemble_size=K` (or `train_ensemble`) trains K members with
seeds train.seed + i into output_dir/member-i.

The loop (`train`) runs over a `TrainData` of pairs with any model whose forward maps a
(2B, T) batch to rewards: `alignlab.recipes.vlm_rm` runs it on image-text pairs.

Run: `alignlab rm --config rm_lab model.path=... data.path=preference.jsonl`, or under
`torchrun --nproc_per_node N -m alignlab.cli rm ...` for FSDP2.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    option,
    section,
)
from alignlab.data.pairs import collate_pairs, split_pairs
from alignlab.data.preference import build_preference_dataset
from alignlab.data.report import DataReport, longest_sequence
from alignlab.data.schema import DataError, Record
from alignlab.data.sources import load_records
from alignlab.eval.reward_eval import expected_calibration_error
from alignlab.losses.reward import bradley_terry_loss, soft_bradley_terry_loss
from alignlab.models.loading import check_positions, load_tokenizer, unwrap_peft
from alignlab.models.reward import SequenceRewards, load_reward_model
from alignlab.training import distributed, loop
from alignlab.training.batches import TrainData, eval_rounds, micro_batches
from alignlab.training.checkpoint import (
    load_checkpoint_state,
    save_checkpoint,
    save_reward_folder,
)
from alignlab.training.optim import build_optimizer, build_scheduler
from alignlab.training.run_folder import RunFolder


@dataclasses.dataclass
class RewardConfig:
    """The reward-model objective and ensembles."""

    margin: str = option(
        "",
        "per-pair margin m in -log σ(r_w - r_l - m): empty = none; a data column (e.g. "
        "'margin'), or 'a-b' the difference of two columns (e.g. 'gold_chosen-gold_rejected')",
    )
    margin_scale: float = option(1.0, "the margin column is multiplied by this", min=0)
    soft_label: str = option(
        "",
        "soft Bradley-Terry targets: a data column holding P(chosen preferred) in [0, 1] "
        "(e.g. 'chosen_probability', as alignlab's AI-feedback pairs carry); empty = hard labels",
    )
    center_rewards_coef: float = option(
        0.0,
        "λ of the centring term λ·(r_w + r_l)² (Eisenstein et al. 2023); 0.01 is typical",
        min=0,
    )
    bootstrap: bool = option(
        False, "train on a bootstrap resample of the training pairs (seeded by train.seed)"
    )
    ensemble_size: int = option(
        1, "train this many members (seeds train.seed + i) into output_dir/member-i", min=1
    )
    eval_bins: int = option(10, "bins of the eval ECE (top-label, over [0.5, 1])", min=1)

    def check(self) -> None:
        if self.margin and self.soft_label:
            raise ConfigError(
                "reward.margin and reward.soft_label: a soft label replaces the margin's hard "
                "vote; choose one"
            )


@dataclasses.dataclass
class RMConfig:
    """Reward model on preference pairs: Bradley-Terry loss, optional margin and centring."""

    model: ModelConfig = section(
        ModelConfig, "the causal LM the reward model starts from", disable_dropout=True
    )
    data: DataConfig = section(DataConfig, "preference pairs (prompt?, chosen, rejected)")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/rm")
    reward: RewardConfig = section(RewardConfig, "reward-model objective and ensembles")
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        for name in ("margin", "soft_label"):
            if getattr(self.reward, name) and (
                self.data.on_bad_example == "skip" or self.data.truncation == "skip"
            ):
                raise ConfigError(
                    f"reward.{name} reads a column per pair, so every pair must be kept: set "
                    "data.on_bad_example=error and data.truncation to keep_start or keep_end"
                )
        if self.data.packing:
            raise ConfigError("data.packing: reward models do not train on packed sequences")


def margin_values(
    records: list[Any], spec: str, scale: float, option_name: str = "reward.margin"
) -> list[float]:
    """m per record from `spec`: a column, or 'a-b' the difference of two columns."""
    values = []
    for record in records:
        data = record.data
        if spec in data:
            parts = [spec]
        else:
            left, sep, right = spec.partition("-")
            parts = [left, right] if sep else [spec]
        numbers = []
        for name in parts:
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(
                    f"{option_name}={spec!r} needs a number here, got {value!r}",
                    record.source,
                    record.line,
                    name,
                )
            numbers.append(float(value))
        values.append(scale * (numbers[0] - numbers[1] if len(numbers) == 2 else numbers[0]))
    return values


def load_pairs(
    cfg: RMConfig, tokenizer: Any, path: str | None = None
) -> tuple[list[dict[str, Any]], DataReport]:
    """Tokenized pairs (`build_preference_dataset`, kind pairs), each with its "margin" and
    "target" (`label_pairs`), and the data report."""
    data = cfg.data
    rows, report = build_preference_dataset(data, tokenizer, path=path, kind="pairs")
    records: list[Record] = []
    if cfg.reward.margin or cfg.reward.soft_label:
        records = load_records(str(path or data.path), data.split, data.max_examples)
        if len(records) != len(rows):  # cannot happen with on_bad_example=error (check())
            raise DataError(f"{len(rows)} pairs but {len(records)} records", path or data.path)
    label_pairs(rows, records, cfg.reward)
    return rows, report


def label_pairs(rows: list[dict[str, Any]], records: list[Record], reward: RewardConfig) -> None:
    """Give each row its margin m ("margin": `reward.margin` of its record, else 0) and its
    P(chosen preferred) ("target": `reward.soft_label` of its record, else 1); `records[i]` is
    the record of `rows[i]` (read only when a column is asked for)."""
    margins, targets = [0.0] * len(rows), [1.0] * len(rows)
    if reward.margin:
        margins = record_values(records, reward.margin, reward.margin_scale)
    if reward.soft_label:
        targets = record_values(records, reward.soft_label, 1.0, "soft_label")
    for row, margin, target in zip(rows, margins, targets):
        row["margin"], row["target"] = margin, target


def record_values(
    records: list[Record], spec: str, scale: float, name: str = "margin"
) -> list[float]:
    """A number per record from its `spec` column (`margin_values`); a soft label must lie in
    [0, 1]."""
    values = margin_values(records, spec, scale, f"reward.{name}")
    if name == "soft_label":
        for record, value in zip(records, values):
            if not 0.0 <= value <= 1.0:
                raise DataError(
                    f"reward.soft_label={spec!r} must be a probability in [0, 1], got {value}",
                    record.source, record.line, spec,
                )  # fmt: skip
    return values


def bootstrap_resample(rows: list[Any], seed: int) -> list[Any]:
    """len(rows) rows drawn with replacement (a bootstrap replicate), deterministic in seed."""
    rng = random.Random(f"alignlab-rm-bootstrap/{seed}")
    return [rows[rng.randrange(len(rows))] for _ in range(len(rows))]


def pair_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None,
    center: float,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) per-pair loss: Bradley-Terry with margin (or against soft targets) plus
    λ·(r_w + r_l)²."""
    if target is not None:
        loss = soft_bradley_terry_loss(chosen, rejected, target)
    else:
        loss = bradley_terry_loss(chosen, rejected, margin)
    if center > 0:
        loss = loss + center * (chosen + rejected) ** 2
    return loss


def run(cfg: RMConfig) -> Path:
    """Train; return the folder of the final reward model (a plain HF sequence-classification
    folder), or with reward.ensemble_size > 1 the output_dir holding member-i/final."""
    if cfg.reward.ensemble_size > 1:
        train_ensemble(cfg, cfg.reward.ensemble_size, cfg.reward.bootstrap)
        return Path(cfg.train.output_dir)
    runtime = distributed.init_runtime()
    folder = loop.start_run(cfg, runtime)

    # --- data ---
    tokenizer = load_tokenizer(cfg.model)
    train_set, report = load_pairs(cfg, tokenizer)
    eval_set: list[dict[str, Any]] = []
    if cfg.data.eval_path:
        eval_set, _ = load_pairs(cfg, tokenizer, path=cfg.data.eval_path)
    elif cfg.data.eval_fraction > 0:
        train_set, eval_set = loop.hold_out(train_set, cfg.data.eval_fraction)
    if cfg.reward.bootstrap:
        train_set = bootstrap_resample(train_set, cfg.train.seed)
    if runtime.is_main:
        print(report.summary())
    longest = longest_sequence(train_set + eval_set)
    check_positions(cfg.model, longest, f"data.max_length={cfg.data.max_length}")
    pad_id = tokenizer.pad_token_id

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate_pairs(rows, pad_id)
        return {key: batch[key] for key in ("input_ids", "attention_mask")}

    data = TrainData(train_set, eval_set, collate)

    # --- model ---
    model = load_reward_model(
        cfg.model, tokenizer, weights_from=folder.resume_from, device=runtime.device,
        seed=cfg.train.seed,
    )  # fmt: skip
    return train(cfg, runtime, folder, model, tokenizer, data)


def train(
    cfg: Any,
    runtime: distributed.Runtime,
    folder: RunFolder,
    model: nn.Module,
    tokenizer: Any,
    data: TrainData,
    rewards: nn.Module | None = None,
    name: str = "rm",
) -> Path:
    """The Bradley-Terry loop over `data` (rows with chosen/rejected token ids, a "margin" and
    a "target"; `data.collate` makes the (2B, T) batch, chosen rows first) for a loaded `model`
    (resumed weights already in it, when `folder.resume_from`): optimizer, resume, metrics,
    eval accuracy and calibration, checkpoints (`tokenizer`, a tokenizer or a processor, saved
    beside the model) and the final folder. `rewards` maps a batch to (2B,) rewards and is the
    module the optimizer trains and FSDP2 shards as the root: `SequenceRewards(model)` unless
    given (a vision-language reward model is its own). `cfg` has the `model`, `train`,
    `reward` and `final_dir` of `RMConfig`."""
    train_cfg, reward_cfg = cfg.train, cfg.reward
    output_dir = Path(train_cfg.output_dir)
    resume_from = folder.resume_from
    train_set, eval_set = data.train, data.eval
    schedule, total_steps, global_batch = loop.training_schedule(train_set, train_cfg, runtime)
    rewards = rewards if rewards is not None else SequenceRewards(model)
    if runtime.distributed:
        distributed.shard_model(rewards, unwrap_peft(model), runtime)
    optimizer = build_optimizer(rewards, train_cfg)
    scheduler = build_scheduler(optimizer, total_steps, train_cfg)
    scaler = loop.grad_scaler(train_cfg, runtime)
    start_step, pairs_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_state(
            resume_from, optimizer, scheduler, runtime, scaler, root=rewards
        )
        start_step, pairs_seen = state["step"], state["pairs_seen"]
    metrics = loop.open_metrics(folder, train_cfg, start_step)
    # LoRA step checkpoints keep the adapter (head included) for resuming; the final folder
    # gets the merged weights (`save_reward_folder` names the head as plain HF does)
    checkpoint_lora = (
        dataclasses.replace(cfg.model.lora, save_merged=False) if cfg.model.lora.enabled else None
    )

    def forward_pairs(rows: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
        """(r_w, r_l, margin, soft target) of rows, one (2B, T) forward."""
        batch = {k: v.to(runtime.device) for k, v in data.collate(rows).items()}
        margin = torch.tensor([r["margin"] for r in rows], device=runtime.device)
        target = torch.tensor([r["target"] for r in rows], device=runtime.device)
        with loop.autocast(runtime.device, train_cfg.mixed_precision):
            r = rewards(batch)  # (2B,)
        chosen, rejected = split_pairs(r)
        return chosen, rejected, margin, target

    def sums(chosen: torch.Tensor, rejected: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss, correct, margin, chosen, rejected, pairs] sums over this micro-batch."""
        c, r = chosen.detach().double(), rejected.detach().double()
        correct = (c > r).double() + 0.5 * (c == r).double()
        return torch.stack(
            [
                loss.detach().double().sum(),
                correct.sum(),
                (c - r).sum(),
                c.sum(),
                r.sum(),
                torch.tensor(float(c.numel()), dtype=torch.float64, device=c.device),
            ]
        )

    def as_metrics(totals: torch.Tensor) -> dict[str, float]:
        n = max(totals[5].item(), 1.0)
        names = ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward")
        return {name: totals[i].item() / n for i, name in enumerate(names)}

    def evaluate() -> dict[str, float]:
        """Held-out pair metrics, each process taking every world_size-th batch."""
        rewards.eval()
        totals = torch.zeros(6, dtype=torch.float64, device=runtime.device)
        pairs: list[tuple[float, float]] = []
        size = train_cfg.micro_batch_size
        batches = [eval_set[i : i + size] for i in range(0, len(eval_set), size)]
        for i in eval_rounds(len(batches), runtime):  # the same count on every process
            with torch.no_grad():
                chosen, rejected, margin, target = forward_pairs(batches[i % len(batches)])
            if i < len(batches):
                loss = pair_losses(
                    chosen, rejected, margin if reward_cfg.margin else None,
                    reward_cfg.center_rewards_coef, target if reward_cfg.soft_label else None,
                )  # fmt: skip
                totals += sums(chosen, rejected, loss)
                pairs.extend(zip(chosen.double().tolist(), rejected.double().tolist()))
        totals = distributed.all_reduce_sum(totals, runtime)
        gathered = [p for part in distributed.all_gather_objects(pairs, runtime) for p in part]
        distributed.reshard(rewards)
        rewards.train()
        result = as_metrics(totals)
        result["ece"] = expected_calibration_error(
            [w for w, _ in gathered], [r for _, r in gathered], reward_cfg.eval_bins
        )
        return result

    def save(step: int) -> None:
        save_checkpoint(
            output_dir, step, model, tokenizer, optimizer, scheduler, runtime,
            lora=checkpoint_lora, scaler=scaler, keep=train_cfg.keep_checkpoints, root=rewards,
            trainer_state={"pairs_seen": pairs_seen, "total_steps": total_steps},
        )  # fmt: skip

    # --- loop ---
    rewards.train()
    progress = loop.progress_bar(
        total_steps, start_step, name, enabled=runtime.is_main and train_cfg.progress
    )
    window_start, window_pairs = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        batches = [
            [train_set[i] for i in ids]
            for ids in micro_batches(
                schedule.step_indices(step),
                runtime,
                train_cfg.micro_batch_size,
                train_cfg.grad_accum,
            )
        ]
        step_pairs = float(global_batch)  # every pair weighs the same in the step's mean
        totals = torch.zeros(6, dtype=torch.float64, device=runtime.device)
        for rows in batches:
            chosen, rejected, margin, target = forward_pairs(rows)
            per_pair = pair_losses(
                chosen, rejected, margin if reward_cfg.margin else None,
                reward_cfg.center_rewards_coef, target if reward_cfg.soft_label else None,
            )  # fmt: skip
            totals += sums(chosen, rejected, per_pair)
            # x world_size because FSDP averages gradients over processes while we want the sum
            loss = per_pair.sum() / step_pairs * runtime.world_size
            loop.backward(loss, scaler)
        grad_norm = loop.optimizer_step(
            rewards, optimizer, scheduler, scaler, train_cfg.max_grad_norm
        )
        totals = distributed.all_reduce_sum(totals, runtime)
        pairs_seen += global_batch
        window_pairs += global_batch
        done = step + 1

        # --- metrics and checkpoints ---
        if done % train_cfg.log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - window_start
            pairs_per_s = window_pairs / max(elapsed, 1e-9)
            step_metrics = as_metrics(totals)
            metrics.log(
                done,
                {
                    **step_metrics,
                    "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "pairs_per_s": pairs_per_s,
                    "pairs_seen": pairs_seen,
                    "epoch": schedule.epoch_at(done),
                },
                prefix="train/",
            )
            progress.set_postfix(
                loss=f"{step_metrics['loss']:.4f}",
                acc=f"{step_metrics['accuracy']:.3f}",
                refresh=False,
            )
            window_start, window_pairs = time.perf_counter(), 0
        progress.update(1)
        loop.end_of_step(
            done, total_steps, train_cfg, metrics, evaluate if eval_set else None, save
        )
    progress.close()

    # --- final model ---
    evaluate_fn = evaluate if eval_set else None
    return loop.save_final(
        cfg, model, tokenizer, runtime, metrics, total_steps, evaluate_fn,
        saver=save_reward_folder, what="reward model",
    )  # fmt: skip


def train_ensemble(
    cfg: RMConfig,
    k: int,
    bootstrap: bool = True,
    run_member: Callable[[Any], Path] | None = None,
) -> list[Path]:
    """Train K reward models one after the other: member i uses seed train.seed + i (head
    initialisation and data order) and, with `bootstrap`, its own bootstrap resample; it
    writes to output_dir/member-i (final model in member-i/final, or final_dir/member-i).
    `run_member`: the recipe's `run` (default this one's; `alignlab.recipes.vlm_rm.run` for
    image-text members). Returns the K final folders, for `RewardScorer`."""
    run_member = run_member or run
    finals = []
    for i in range(k):
        member = dataclasses.replace(
            cfg,
            train=dataclasses.replace(
                cfg.train,
                seed=cfg.train.seed + i,
                output_dir=str(Path(cfg.train.output_dir) / f"member-{i}"),
            ),
            reward=dataclasses.replace(cfg.reward, bootstrap=bootstrap, ensemble_size=1),
            final_dir=str(Path(cfg.final_dir) / f"member-{i}") if cfg.final_dir else "",
        )
        finals.append(run_member(member))
    return finals
