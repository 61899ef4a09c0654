"""RRHF: rank K scored responses per prompt by length-normalised log-likelihood, plus SFT on
the best one.

    p_i    = Σ_t log π(y_i,t | x, y_i,<t) / |y_i|^α          (α = length_penalty, 1 = mean)
    L_rank = Σ_{i, j : s_i < s_j} max(0, p_i - p_j)
    L_ft   = - Σ_{t ∈ y_best} log π(y_best,t | ...),   y_best = argmax_i s_i

    loss = Σ_prompts L_rank / N_prompts  +  w · Σ L_ft / N_best_tokens

Yuan et al. 2023, arXiv:2304.05302. Both counts are over the whole optimizer step (all
micro-batches and processes), so accumulation and data parallelism are exact. No reference
model. Lists may have different lengths; all responses of a micro-batch go through one forward.
Preference pairs are two-response lists (chosen scored 1, rejected 0), or, with
`pairs_as=win_rate`, each prompt's responses ranked by the share of its pairs each one won.

Run: `alignlab rrhf model.path=... data.path=ranked.jsonl`, or under
`torchrun --nproc_per_node N -m alignlab.cli rrhf ...` for FSDP2. docs/methods/rrhf.md.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from alignlab.config import DataConfig, ModelConfig, TrainConfig, option, section
from alignlab.data.collate import collate
from alignlab.data.preference import PAIRS_AS, build_preference_dataset
from alignlab.data.report import longest_sequence
from alignlab.losses.preference import rrhf_loss
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import check_positions, load_model, load_tokenizer
from alignlab.training import distributed, loop
from alignlab.training.batches import eval_rounds, micro_batches
from alignlab.training.checkpoint import (
    load_checkpoint_state,
    save_checkpoint,
)
from alignlab.training.optim import build_optimizer, build_scheduler
from alignlab.training.preference_step import (
    SequenceLogProbs,
    StepSums,
    global_sum,
    sequence_stats,
)


@dataclasses.dataclass
class RRHFConfig:
    """RRHF on ranked lists (prompt, responses, scores), or on pairs as two-response lists."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: DataConfig = section(DataConfig, "ranked responses or preference pairs")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/rrhf")
    length_penalty: float = option(1.0, "α: p_i = sum log-prob / length^α (1 = mean)", min=0)
    nll_weight: float = option(1.0, "weight of the NLL of the best response (L_ft)", min=0)
    pairs_as: str = option(
        "pairs",
        "preference pairs: each a two-response list, or win_rate: each prompt's responses "
        "ranked by the fraction of their pairs they won (alignlab.data.win_rate)",
        choices=PAIRS_AS,
    )
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")


def flatten(rows: list[dict]) -> tuple[list[dict], list[int], torch.Tensor]:
    """All responses of `rows` as sequences, each row's list length, and (B, K_max) scores
    padded with NaN (NaN compares false, so padding adds no pair to the ranking loss)."""
    sequences = [response for row in rows for response in row["responses"]]
    sizes = [len(row["responses"]) for row in rows]
    scores = torch.full((len(rows), max(sizes)), float("nan"), dtype=torch.float64)
    for b, row in enumerate(rows):
        scores[b, : sizes[b]] = torch.tensor(row["scores"], dtype=torch.float64)
    return sequences, sizes, scores


def group(values: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(Σ sizes,) -> (B, K_max), zero-padded."""
    out = values.new_zeros(len(sizes), max(sizes))
    mask = (
        torch.arange(max(sizes), device=values.device)[None, :]
        < torch.tensor(sizes, device=values.device)[:, None]
    )
    return out.masked_scatter(mask, values)


def best_positions(rows: list[dict]) -> list[int]:
    """Index in the flattened list of each row's best-scored response (first on ties)."""
    positions, offset = [], 0
    for row in rows:
        scores = row["scores"]
        positions.append(offset + max(range(len(scores)), key=lambda i: (scores[i], -i)))
        offset += len(scores)
    return positions


def rank_terms(
    stats: SequenceLogProbs, sizes: list[int], scores: torch.Tensor, length_penalty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank losses (B,), length-normalised log-probs (B, K_max)) of one micro-batch."""
    normalised = stats.sums / stats.counts.clamp(min=1) ** length_penalty
    logps = group(normalised, sizes)
    scores = scores.to(logps.device, logps.dtype)
    return rrhf_loss(logps, scores), logps


def run(cfg: RRHFConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    # --- setup ---
    runtime = distributed.init_runtime()
    train_cfg = cfg.train
    output_dir = Path(train_cfg.output_dir)
    folder = loop.start_run(cfg, runtime)
    resume_from = folder.resume_from

    # --- data ---
    tokenizer = load_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id
    train_set, report = build_preference_dataset(
        cfg.data, tokenizer, kind="ranked", pairs_as=cfg.pairs_as
    )
    eval_set: list[dict] = []
    if cfg.data.eval_path:
        eval_set, _ = build_preference_dataset(
            cfg.data, tokenizer, cfg.data.eval_path, "ranked", pairs_as=cfg.pairs_as
        )
    elif cfg.data.eval_fraction > 0:
        train_set, eval_set = loop.hold_out(train_set, cfg.data.eval_fraction)
    if runtime.is_main:
        print(report.summary())
    longest = longest_sequence(train_set + eval_set)
    check_positions(cfg.model, longest, f"data.max_length={cfg.data.max_length}")
    schedule, total_steps, global_batch = loop.training_schedule(train_set, train_cfg, runtime)

    # --- model ---
    model = load_model(cfg.model, tokenizer, weights_from=resume_from, device=runtime.device)
    policy = TokenLogProbs(model, chunk_size=train_cfg.loss_chunk_size)
    if runtime.distributed:
        distributed.shard_model(policy, model, runtime)
    optimizer = build_optimizer(policy, train_cfg)
    scheduler = build_scheduler(optimizer, total_steps, train_cfg)
    scaler = loop.grad_scaler(train_cfg, runtime)
    start_step, lists_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_state(
            resume_from, optimizer, scheduler, runtime, scaler, root=policy
        )
        start_step, lists_seen = state["step"], state["lists_seen"]
    metrics = loop.open_metrics(folder, train_cfg, start_step)

    def prepare(rows: list[dict]) -> tuple[dict[str, torch.Tensor], list[int], torch.Tensor, list]:
        sequences, sizes, scores = flatten(rows)
        batch = {k: v.to(runtime.device) for k, v in collate(sequences, pad_id).items()}
        return batch, sizes, scores, best_positions(rows)

    def evaluate() -> dict[str, float]:
        """Mean ranking loss and best-response token NLL over the eval lists."""
        policy.eval()
        sums = StepSums(runtime.device)
        size = train_cfg.micro_batch_size
        chunks = [eval_set[i : i + size] for i in range(0, len(eval_set), size)]
        for k in eval_rounds(len(chunks), runtime):
            batch, sizes, scores, best = prepare(chunks[k % len(chunks)])
            with torch.no_grad(), loop.autocast(runtime.device, train_cfg.mixed_precision):
                stats = sequence_stats(policy(batch), batch)
            ranks, _ = rank_terms(stats, sizes, scores, cfg.length_penalty)
            weight = 1.0 if k < len(chunks) else 0.0
            sums.add("rank", weight * ranks)
            sums.add("nll", -weight * stats.sums[best])
            sums.add("tokens", weight * stats.counts[best])
        distributed.reshard(policy)
        policy.train()
        totals = sums.reduce(runtime)
        return {
            "rank_loss": totals["rank"] / len(eval_set),
            "nll": totals["nll"] / max(totals["tokens"], 1.0),
        }

    def save(step: int) -> None:
        save_checkpoint(
            output_dir, step, model, tokenizer, optimizer, scheduler, runtime,
            lora=cfg.model.lora, scaler=scaler, keep=train_cfg.keep_checkpoints, root=policy,
            trainer_state={"lists_seen": lists_seen, "total_steps": total_steps},
        )  # fmt: skip

    # --- loop ---
    policy.train()
    progress = loop.progress_bar(
        total_steps, start_step, "rrhf", enabled=runtime.is_main and train_cfg.progress
    )
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        groups = micro_batches(
            schedule.step_indices(step), runtime, train_cfg.micro_batch_size, train_cfg.grad_accum
        )
        prepared = [prepare([train_set[i] for i in g]) for g in groups]
        local_best = sum(int(policy.mask(b).sum(-1)[best].sum()) for b, _, _, best in prepared)
        step_best_tokens = global_sum(local_best, runtime)
        step_tokens = global_sum(sum(int(policy.mask(b).sum()) for b, *_ in prepared), runtime)
        sums = StepSums(runtime.device)
        for batch, sizes, scores, best in prepared:
            with loop.autocast(runtime.device, train_cfg.mixed_precision):
                token_logps = policy(batch)  # (Σ K, T)
            stats = sequence_stats(token_logps, batch)
            ranks, logps = rank_terms(stats, sizes, scores, cfg.length_penalty)
            nll = -stats.sums[best].sum()
            loss = ranks.sum() / global_batch
            if cfg.nll_weight:
                loss = loss + cfg.nll_weight * nll / max(step_best_tokens, 1.0)
            loop.backward(loss * runtime.world_size, scaler)  # FSDP averages over processes
            sums.add("loss", loss)
            sums.add("rank_loss", ranks)
            sums.add("nll", nll)
            # ranking accuracy: ordered pairs (by score) whose normalised log-probs agree
            scores = scores.to(logps.device)
            above = scores[:, :, None] > scores[:, None, :]
            sums.add("ordered_pairs", above.double())
            sums.add("correct_pairs", (above & (logps[:, :, None] > logps[:, None, :])).double())
        grad_norm = loop.optimizer_step(
            policy, optimizer, scheduler, scaler, train_cfg.max_grad_norm
        )
        totals = sums.reduce(runtime)
        lists_seen += global_batch
        window_tokens += int(step_tokens)
        done = step + 1

        # --- metrics and checkpoints ---
        if done % train_cfg.log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / max(elapsed, 1e-9)
            record = {
                "loss": totals["loss"],
                "rank_loss": totals["rank_loss"] / global_batch,
                "nll": totals["nll"] / max(step_best_tokens, 1.0),
                "rank_accuracy": totals["correct_pairs"] / max(totals["ordered_pairs"], 1.0),
                "grad_norm": grad_norm,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": tokens_per_s,
                "lists_seen": lists_seen,
                "epoch": schedule.epoch_at(done),
            }
            metrics.log(done, record, prefix="train/")
            progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            window_start, window_tokens = time.perf_counter(), 0
        progress.update(1)
        loop.end_of_step(
            done, total_steps, train_cfg, metrics, evaluate if eval_set else None, save
        )
    progress.close()

    # --- final model ---
    evaluate_fn = evaluate if eval_set else None
    return loop.save_final(cfg, model, tokenizer, runtime, metrics, total_steps, evaluate_fn)
