"""Offline paired preference optimisation: DPO (cDPO), IPO, SLiC-HF, ORPO, SimPO in one loop.

For each pair (x, y_w, y_l), with π_w = Σ_t log π(y_w,t | x, y_w,<t) (summed log-probs),
m_w = π_w / |y_w| (length-averaged), ref_* the same under the reference:

    dpo:   -(1-ε) log σ(β h) - ε log σ(-β h),   h = (π_w - ref_w) - (π_l - ref_l)
    ipo:   (h - 1/(2β))²  on length-averaged log-probs (ipo_logps=mean) or sums
    slic:  max(0, δ - π_w + π_l)                        (reference-free)
    orpo:  λ · -log σ(log odds(m_w) - log odds(m_l))    (reference-free)
    simpo: -log σ(β (m_w - m_l) - γ)                    (reference-free)

    loss = Σ_pairs ℓ / N_pairs  +  w · Σ_{chosen tokens} -log π / N_chosen_tokens

N_pairs and N_chosen_tokens count the whole optimizer step (all micro-batches, all
processes), so grad accumulation and data parallelism are exact. w = nll_weight; its default
(-1) means 1 for orpo (the paper's L_SFT) and slic (SLiC-HF's regularisation), 0 otherwise
(w > 0 with dpo is RPO). Chosen and rejected sequences go through one (2B, T) forward.

Run: `alignlab dpo --config dpo_lab model.path=... data.path=pairs.jsonl`, or under
`torchrun --nproc_per_node N -m alignlab.cli dpo ...` for FSDP2. docs/methods/dpo.md,
docs/methods/orpo_simpo.md.
"""

from __future__ import annotations

import dataclasses
import time
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
from alignlab.data.report import longest_sequence
from alignlab.losses.preference import (
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    orpo_odds_ratio_loss,
    simpo_loss,
    slic_loss,
)
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import check_positions, load_model, load_tokenizer
from alignlab.training import distributed, loop
from alignlab.training.batches import TrainData, eval_rounds, micro_batches
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
from alignlab.training.reference import ReferenceConfig, ReferenceLogProbs, check_reference
from alignlab.training.run_folder import RunFolder

LOSSES = ("dpo", "ipo", "slic", "orpo", "simpo")
REFERENCE_FREE = ("slic", "orpo", "simpo")


@dataclasses.dataclass
class DPOConfig:
    """Paired preference optimisation (DPO, cDPO, IPO, SLiC-HF, ORPO, SimPO) on chosen/rejected
    data."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: DataConfig = section(DataConfig, "preference pairs (prompt?, chosen, rejected)")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/dpo")
    reference: ReferenceConfig = section(
        ReferenceConfig, "reference log-probs (dpo, ipo)", mode="precomputed"
    )
    loss: str = option("dpo", "pairwise loss", choices=LOSSES)
    beta: float = option(
        0.1, "β: DPO/IPO temperature (IPO's τ); SimPO reward scale (~2)", min=0, min_exclusive=True
    )
    label_smoothing: float = option(
        0.0, "cDPO: assumed probability that a preference label is flipped (dpo)", min=0, max=0.5
    )
    ipo_logps: str = option(
        "mean", "IPO on length-averaged (mean, as TRL) or summed (sum, the paper) log-probs",
        choices=("mean", "sum"),
    )  # fmt: skip
    slic_delta: float = option(1.0, "SLiC-HF hinge margin δ on summed log-probs", min=0)
    orpo_lambda: float = option(0.1, "ORPO: weight λ of the odds-ratio term", min=0)
    simpo_gamma: float = option(0.5, "SimPO target reward margin γ")
    nll_weight: float = option(
        -1.0,
        "weight of the token-mean NLL of the chosen response; -1 = method default "
        "(1 for orpo and slic, 0 otherwise; > 0 with dpo is RPO)",
        min=-1,
    )
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        if self.label_smoothing > 0 and self.loss != "dpo":
            raise ConfigError(f"label_smoothing (cDPO) applies to loss=dpo, not {self.loss}")
        if self.nll_weight < 0 and self.nll_weight != -1:
            raise ConfigError(f"nll_weight: {self.nll_weight} is not allowed; use -1 or >= 0")
        if self.uses_reference:
            check_reference(self.reference, self.model)

    @property
    def uses_reference(self) -> bool:
        return self.loss not in REFERENCE_FREE

    @property
    def nll_coef(self) -> float:
        if self.nll_weight >= 0:
            return self.nll_weight
        return 1.0 if self.loss in ("orpo", "slic") else 0.0


def pair_losses(
    cfg: DPOConfig, policy: SequenceLogProbs, ref_sums: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses (B,), chosen_rewards (B,), rejected_rewards (B,)) of a (2B,) chosen-then-rejected
    batch. Rewards (detached) are β(π - ref) for dpo, cdpo, ipo (same log-probs as the loss);
    summed log-probs for slic; mean token log-probs m for orpo, β·m for simpo."""
    sums_w, sums_l = split_pairs(policy.sums)
    means_w, means_l = split_pairs(policy.means)
    if cfg.loss == "dpo":
        ref_w, ref_l = split_pairs(ref_sums)
        if cfg.label_smoothing:
            return cdpo_loss(sums_w, sums_l, ref_w, ref_l, cfg.beta, cfg.label_smoothing)
        return dpo_loss(sums_w, sums_l, ref_w, ref_l, cfg.beta)
    if cfg.loss == "ipo":
        ref_w, ref_l = split_pairs(ref_sums)
        if cfg.ipo_logps == "mean":
            counts_w, counts_l = split_pairs(policy.counts.clamp(min=1))
            return ipo_loss(means_w, means_l, ref_w / counts_w, ref_l / counts_l, cfg.beta)
        return ipo_loss(sums_w, sums_l, ref_w, ref_l, cfg.beta)
    if cfg.loss == "slic":
        return slic_loss(sums_w, sums_l, cfg.slic_delta)
    if cfg.loss == "orpo":
        losses, chosen, rejected = orpo_odds_ratio_loss(means_w, means_l)
        return cfg.orpo_lambda * losses, chosen, rejected
    return simpo_loss(means_w, means_l, cfg.beta, cfg.simpo_gamma)


def pair_items(rows: list[dict], split: str) -> list[tuple[tuple, dict[str, Any]]]:
    """(key, sequence) of every chosen and rejected sequence, for the reference pass; an image
    pair's sequence also carries its `VlmRow` ("row"), which the image collate reads."""
    items = []
    for i, row in enumerate(rows):
        for side in ("chosen", "rejected"):
            sequence = {"input_ids": row[f"{side}_input_ids"], "labels": row[f"{side}_labels"]}
            if f"{side}_row" in row:
                sequence["row"] = row[f"{side}_row"]
            items.append(((split, i, side), sequence))
    return items


def pair_keys(split: str, indices: list[int]) -> list[tuple]:
    """Keys of a collate_pairs batch of `indices`: chosen rows first, then rejected."""
    return [(split, i, "chosen") for i in indices] + [(split, i, "rejected") for i in indices]


def prepare_reference(
    cfg: DPOConfig,
    runtime: distributed.Runtime,
    folder: RunFolder,
    tokenizer: Any,
    data: TrainData,
    **loading: Any,
) -> ReferenceLogProbs | None:
    """The reference of a reference-based loss, prepared over every pair of `data` (before
    the policy loads: a precomputed reference is freed first); None for the others.
    `loading`: `load` and `collate_fn` of a vision-language recipe (`ReferenceLogProbs`)."""
    if not cfg.uses_reference:
        return None
    train_cfg = cfg.train
    reference = ReferenceLogProbs(
        cfg.reference, cfg.model, tokenizer, runtime,
        chunk_size=train_cfg.loss_chunk_size, mixed_precision=train_cfg.mixed_precision,
        batch_size=2 * train_cfg.micro_batch_size, cache_dir=Path(train_cfg.output_dir),
        claim_folder=folder.claim, **loading,
    )  # fmt: skip
    reference.prepare(pair_items(data.train, "train") + pair_items(data.eval, "eval"))
    return reference


def run(cfg: DPOConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    runtime = distributed.init_runtime()
    folder = loop.start_run(cfg, runtime)
    distributed.barrier(runtime)

    # --- data ---
    tokenizer = load_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id
    train_set, report = build_preference_dataset(cfg.data, tokenizer, kind="pairs")
    eval_set: list[dict] = []
    if cfg.data.eval_path:
        eval_set, _ = build_preference_dataset(cfg.data, tokenizer, cfg.data.eval_path, "pairs")
    elif cfg.data.eval_fraction > 0:
        train_set, eval_set = loop.hold_out(train_set, cfg.data.eval_fraction)
    if runtime.is_main:
        print(report.summary())
    longest = longest_sequence(train_set + eval_set)
    check_positions(cfg.model, longest, f"data.max_length={cfg.data.max_length}")
    data = TrainData(train_set, eval_set, lambda rows: collate_pairs(rows, pad_id))

    # --- reference, then the policy ---
    reference = prepare_reference(cfg, runtime, folder, tokenizer, data)
    model = load_model(cfg.model, tokenizer, weights_from=folder.resume_from, device=runtime.device)
    return train(cfg, runtime, folder, model, tokenizer, data, reference)


def train(
    cfg: DPOConfig,
    runtime: distributed.Runtime,
    folder: RunFolder,
    model: nn.Module,
    tokenizer: Any,
    data: TrainData,
    reference: ReferenceLogProbs | None,
) -> Path:
    """The pair loop over `data` (rows of chosen/rejected token ids; `data.collate` makes the
    (2B, T) batch, chosen rows first) for a loaded `model` (resumed weights already in it):
    optimizer, resume, metrics, eval, checkpoints (`tokenizer`, a tokenizer or a processor,
    saved beside the model) and the final folder."""
    train_cfg = cfg.train
    output_dir = Path(train_cfg.output_dir)
    resume_from = folder.resume_from
    train_set, eval_set = data.train, data.eval
    schedule, total_steps, global_batch = loop.training_schedule(train_set, train_cfg, runtime)
    policy = TokenLogProbs(model, chunk_size=train_cfg.loss_chunk_size)
    if runtime.distributed:
        distributed.shard_model(policy, model, runtime)
    if reference is not None:
        reference.attach(policy)
    optimizer = build_optimizer(policy, train_cfg)
    scheduler = build_scheduler(optimizer, total_steps, train_cfg)
    scaler = loop.grad_scaler(train_cfg, runtime)
    start_step, pairs_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_state(
            resume_from, optimizer, scheduler, runtime, scaler, root=policy
        )
        start_step, pairs_seen = state["step"], state["pairs_seen"]
    metrics = loop.open_metrics(folder, train_cfg, start_step)
    nll_coef = cfg.nll_coef

    def batch_of(rows: list[dict]) -> dict[str, torch.Tensor]:
        return {k: v.to(runtime.device) for k, v in data.collate(rows).items()}

    def evaluate() -> dict[str, float]:
        """Mean pair loss, reward accuracy and margin over the eval pairs (every process takes
        every world_size-th batch; all run the same number of collective forwards)."""
        policy.eval()
        sums = StepSums(runtime.device)
        size = train_cfg.micro_batch_size
        starts = list(range(0, len(eval_set), size))
        for k in eval_rounds(len(starts), runtime):
            indices = list(range(starts[k % len(starts)], starts[k % len(starts)] + size))
            indices = [i for i in indices if i < len(eval_set)]
            batch = batch_of([eval_set[i] for i in indices])
            ref_sums = reference(batch, pair_keys("eval", indices)) if reference else None
            with torch.no_grad(), loop.autocast(runtime.device, train_cfg.mixed_precision):
                stats = sequence_stats(policy(batch), batch)
            losses, chosen_r, rejected_r = pair_losses(cfg, stats, ref_sums)
            weight = 1.0 if k < len(starts) else 0.0
            sums.add("pairs", weight * len(indices))
            sums.add("loss", weight * losses)
            sums.add("rewards/accuracy", weight * (chosen_r > rejected_r).double())
            sums.add("rewards/margin", weight * (chosen_r - rejected_r))
        distributed.reshard(policy)
        policy.train()
        totals = sums.reduce(runtime)
        pairs = max(totals.pop("pairs"), 1.0)
        return {name: value / pairs for name, value in totals.items()}

    def save(step: int) -> None:
        save_checkpoint(
            output_dir, step, model, tokenizer, optimizer, scheduler, runtime,
            lora=cfg.model.lora, scaler=scaler, keep=train_cfg.keep_checkpoints, root=policy,
            trainer_state={"pairs_seen": pairs_seen, "total_steps": total_steps},
        )  # fmt: skip

    # --- loop ---
    policy.train()
    progress = loop.progress_bar(
        total_steps, start_step, cfg.loss, enabled=runtime.is_main and train_cfg.progress
    )
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        groups = micro_batches(
            schedule.step_indices(step), runtime, train_cfg.micro_batch_size, train_cfg.grad_accum
        )
        batches = [batch_of([train_set[i] for i in g]) for g in groups]
        local_chosen = sum(int(split_pairs(policy.mask(b))[0].sum()) for b in batches)
        step_chosen_tokens = global_sum(local_chosen, runtime)
        step_tokens = global_sum(sum(int(policy.mask(b).sum()) for b in batches), runtime)
        sums = StepSums(runtime.device)
        for indices, batch in zip(groups, batches):
            ref_sums = reference(batch, pair_keys("train", indices)) if reference else None
            with loop.autocast(runtime.device, train_cfg.mixed_precision):
                token_logps = policy(batch)  # (2B, T), 0 where not trained
            stats = sequence_stats(token_logps, batch)
            losses, chosen_r, rejected_r = pair_losses(cfg, stats, ref_sums)
            nll = -split_pairs(stats.sums)[0].sum()
            loss = losses.sum() / global_batch
            if nll_coef:
                loss = loss + nll_coef * nll / max(step_chosen_tokens, 1.0)
            loop.backward(loss * runtime.world_size, scaler)  # FSDP averages over processes
            sums.add("loss", loss)
            sums.add("nll", nll)
            sums.add("rewards/chosen", chosen_r)
            sums.add("rewards/rejected", rejected_r)
            sums.add("rewards/accuracy", (chosen_r > rejected_r).double())
            if cfg.loss == "slic":  # share of pairs the hinge still pushes (see docs: δ)
                sums.add("hinge_active", (losses.detach() > 0).double())
            sums.add("logps/chosen", split_pairs(stats.sums)[0])
            sums.add("logps/rejected", split_pairs(stats.sums)[1])
            if ref_sums is not None:
                logratio = stats.sums.detach() - ref_sums
                sums.add("logratio/chosen", split_pairs(logratio)[0])
                sums.add("logratio/rejected", split_pairs(logratio)[1])
        grad_norm = loop.optimizer_step(
            policy, optimizer, scheduler, scaler, train_cfg.max_grad_norm
        )
        totals = sums.reduce(runtime)
        pairs_seen += global_batch
        window_tokens += int(step_tokens)
        done = step + 1

        # --- metrics and checkpoints ---
        if done % train_cfg.log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / max(elapsed, 1e-9)
            record = {"loss": totals.pop("loss")}
            record["nll"] = totals.pop("nll") / max(step_chosen_tokens, 1.0)
            record.update({name: value / global_batch for name, value in totals.items()})
            record["rewards/margin"] = record["rewards/chosen"] - record["rewards/rejected"]
            record.update(
                {
                    "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens_per_s,
                    "pairs_seen": pairs_seen,
                    "epoch": schedule.epoch_at(done),
                }
            )
            metrics.log(done, record, prefix="train/")
            progress.set_postfix(
                loss=f"{record['loss']:.4f}",
                acc=f"{record['rewards/accuracy']:.2f}",
                refresh=False,
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
