"""KTO: preference optimisation from unpaired thumbs-up / thumbs-down feedback.

For a completion y of prompt x with r = log π(y|x) - log π_ref(y|x) (summed log-probs):

    z0   = max(0, mean over the step of [log π(y'|x) - log π_ref(y'|x)]),  detached
    loss = λ_D (1 - σ(β (r - z0)))  if y is desirable,  λ_U (1 - σ(β (z0 - r)))  otherwise

Ethayarajh et al. 2024, arXiv:2402.01306. The reference point z0 estimates KL(π ‖ π_ref) from
mismatched pairs (x_i, y_{i+1}): the completions of the optimizer step's global batch shifted
by one (as TRL shifts them within a batch), so the pairs, and z0, do not depend on how the
step is split into micro-batches or processes. z0 comes from a no-grad pass over those pairs
before the step's training forwards, as in the paper and TRL (no gradient through z0).

    step loss = Σ_examples loss / N_step   (N_step: examples of the whole optimizer step)

Paired data (chosen/rejected) is split: chosen -> desirable, rejected -> undesirable; or, with
`pairs_as=win_rate`, each response is labelled once by the share of its prompt's pairs it won
(`alignlab.data.win_rate`).

Run: `alignlab kto model.path=... data.path=feedback.jsonl`, or under
`torchrun --nproc_per_node N -m alignlab.cli kto ...` for FSDP2. docs/methods/kto.md.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from alignlab.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    option,
    section,
)
from alignlab.data.collate import collate
from alignlab.data.preference import PAIRS_AS, build_preference_dataset
from alignlab.data.report import longest_sequence
from alignlab.data.unpaired import mismatched_row
from alignlab.losses.preference import kto_loss
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
    StepSums,
    global_sum,
    sequence_stats,
)
from alignlab.training.reference import ReferenceConfig, ReferenceLogProbs, check_reference


@dataclasses.dataclass
class KTOConfig:
    """KTO on unpaired binary feedback (prompt, completion, label), or on pairs split in two."""

    model: ModelConfig = section(ModelConfig, "the policy to train", disable_dropout=True)
    data: DataConfig = section(DataConfig, "unpaired feedback or preference pairs")
    train: TrainConfig = section(TrainConfig, "optimisation loop", output_dir="runs/kto")
    reference: ReferenceConfig = section(ReferenceConfig, "reference log-probs", mode="precomputed")
    beta: float = option(
        0.1, "β: scale of the log-ratio inside the sigmoid", min=0, min_exclusive=True
    )
    desirable_weight: float = option(1.0, "λ_D: weight of desirable examples", min=0)
    undesirable_weight: float = option(1.0, "λ_U: weight of undesirable examples", min=0)
    pairs_as: str = option(
        "pairs",
        "preference pairs: each split in two (chosen desirable, rejected not), or win_rate: each "
        "response desirable when it won more than half of its prompt's pairs, not when it lost "
        "more than half (alignlab.data.win_rate)",
        choices=PAIRS_AS,
    )
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")

    def check(self) -> None:
        if self.train.micro_batch_size * self.train.grad_accum < 2:
            raise ConfigError(
                "KTO's KL reference point pairs each prompt with another example's completion "
                "of the same step: micro_batch_size x grad_accum must be >= 2"
            )
        check_reference(self.reference, self.model)


def kl_pairs(indices: list[int]) -> list[tuple[int, int]]:
    """(prompt example, completion example) of each position of a step's global batch: the
    completions shifted by one."""
    return [(i, indices[(p + 1) % len(indices)]) for p, i in enumerate(indices)]


def run(cfg: KTOConfig) -> Path:
    """Train; return the folder of the final model (a plain HF folder)."""
    # --- setup ---
    runtime = distributed.init_runtime()
    train_cfg = cfg.train
    output_dir = Path(train_cfg.output_dir)
    folder = loop.start_run(cfg, runtime)
    resume_from = folder.resume_from
    distributed.barrier(runtime)

    # --- data ---
    tokenizer = load_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id
    max_length = cfg.data.max_length
    train_set, report = build_preference_dataset(
        cfg.data, tokenizer, kind="unpaired", pairs_as=cfg.pairs_as
    )
    eval_set: list[dict] = []
    if cfg.data.eval_path:
        eval_set, _ = build_preference_dataset(
            cfg.data, tokenizer, cfg.data.eval_path, "unpaired", pairs_as=cfg.pairs_as
        )
    elif cfg.data.eval_fraction > 0:
        train_set, eval_set = loop.hold_out(train_set, cfg.data.eval_fraction)
    if runtime.is_main:
        desirable = sum(row["label"] for row in train_set)
        print(f"{report.summary()}; {desirable} desirable, {len(train_set) - desirable} not")
    longest = longest_sequence(train_set + eval_set)
    check_positions(cfg.model, longest, f"data.max_length={cfg.data.max_length}")
    schedule, total_steps, global_batch = loop.training_schedule(train_set, train_cfg, runtime)
    rows = {"train": train_set, "eval": eval_set}

    def sequence(split: str, key: tuple) -> dict[str, list[int]]:
        """("x", i): example i; ("kl", i, j): prompt of i + completion of j."""
        data = rows[split]
        if key[0] == "x":
            return {"input_ids": data[key[1]]["input_ids"], "labels": data[key[1]]["labels"]}
        return mismatched_row(data[key[1]], data[key[2]], max_length)

    eval_order = list(range(len(eval_set)))

    # --- reference (before the policy: a precomputed reference is freed before it loads) ---
    reference = ReferenceLogProbs(
        cfg.reference, cfg.model, tokenizer, runtime,
        chunk_size=train_cfg.loss_chunk_size, mixed_precision=train_cfg.mixed_precision,
        batch_size=2 * train_cfg.micro_batch_size, cache_dir=output_dir,
            claim_folder=folder.claim,
    )  # fmt: skip
    if cfg.reference.mode == "precomputed":
        keys = [("train", "x", i) for i in range(len(train_set))]
        keys += [("eval", "x", i) for i in range(len(eval_set))]
        needed = {("eval", "kl", i, j) for i, j in kl_pairs(eval_order)} if eval_set else set()
        for step in range(total_steps):  # the mismatched pairs the schedule will use
            needed |= {("train", "kl", i, j) for i, j in kl_pairs(schedule.step_indices(step))}
        keys += sorted(needed)
        reference.prepare([(key, sequence(key[0], key[1:])) for key in keys])
    else:
        reference.prepare()

    # --- model ---
    model = load_model(cfg.model, tokenizer, weights_from=resume_from, device=runtime.device)
    policy = TokenLogProbs(model, chunk_size=train_cfg.loss_chunk_size)
    if runtime.distributed:
        distributed.shard_model(policy, model, runtime)
    reference.attach(policy)
    optimizer = build_optimizer(policy, train_cfg)
    scheduler = build_scheduler(optimizer, total_steps, train_cfg)
    scaler = loop.grad_scaler(train_cfg, runtime)
    start_step, examples_seen = 0, 0
    if resume_from is not None:
        state = load_checkpoint_state(
            resume_from, optimizer, scheduler, runtime, scaler, root=policy
        )
        start_step, examples_seen = state["step"], state["examples_seen"]
    metrics = loop.open_metrics(folder, train_cfg, start_step)

    def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(runtime.device) for k, v in batch.items()}

    def keyed_batch(split: str, keys: list[tuple]) -> tuple[dict[str, torch.Tensor], list[tuple]]:
        batch = to_device(collate([sequence(split, key) for key in keys], pad_id))
        return batch, [(split, *key) for key in keys]

    def kl_estimate(
        split: str,
        groups: list[list[tuple[int, int]]],
        count: int,
        counted: list[bool] | None = None,
    ) -> float:
        """Mean over `count` mismatched pairs of log π - log π_ref (no gradient), summed over
        this process's `groups` of pairs (those `counted`) and all processes. Every process
        must pass the same number of groups (forwards are collective under FSDP2)."""
        total = torch.zeros((), dtype=torch.float64, device=runtime.device)
        for k, group in enumerate(groups):
            batch, keys = keyed_batch(split, [("kl", i, j) for i, j in group])
            ref_sums = reference(batch, keys)
            with torch.no_grad(), loop.autocast(runtime.device, train_cfg.mixed_precision):
                sums = sequence_stats(policy(batch), batch).sums
            if counted is None or counted[k]:
                total += (sums - ref_sums).double().sum()
        distributed.reshard(policy)
        return distributed.all_reduce_sum(total, runtime).item() / max(count, 1)

    def evaluate() -> dict[str, float]:
        """Mean KTO loss over the eval set, z0 from its completions shifted by one."""
        policy.eval()
        size = train_cfg.micro_batch_size
        pairs = kl_pairs(eval_order)
        chunks = [pairs[s : s + size] for s in range(0, len(pairs), size)]
        padded = eval_rounds(len(chunks), runtime)
        mine = [chunks[k % len(chunks)] for k in padded]
        counted = [k < len(chunks) for k in padded]  # extra forwards keep collectives equal
        z0 = kl_estimate("eval", mine, len(pairs), counted)
        sums = StepSums(runtime.device)
        for group, real in zip(mine, counted):
            indices = [i for i, _ in group]
            batch, keys = keyed_batch("eval", [("x", i) for i in indices])
            ref_sums = reference(batch, keys)
            with torch.no_grad(), loop.autocast(runtime.device, train_cfg.mixed_precision):
                stats = sequence_stats(policy(batch), batch)
            desirable = torch.tensor([eval_set[i]["label"] for i in indices], device=runtime.device)
            losses, _ = kto_loss(
                stats.sums, ref_sums, desirable, z0, cfg.beta,
                cfg.desirable_weight, cfg.undesirable_weight,
            )  # fmt: skip
            sums.add("loss", losses if real else 0.0 * losses)
        distributed.reshard(policy)
        policy.train()
        return {"loss": sums.reduce(runtime)["loss"] / len(eval_set), "kl": z0}

    def save(step: int) -> None:
        save_checkpoint(
            output_dir, step, model, tokenizer, optimizer, scheduler, runtime,
            lora=cfg.model.lora, scaler=scaler, keep=train_cfg.keep_checkpoints, root=policy,
            trainer_state={"examples_seen": examples_seen, "total_steps": total_steps},
        )  # fmt: skip

    # --- loop ---
    policy.train()
    progress = loop.progress_bar(
        total_steps, start_step, "kto", enabled=runtime.is_main and train_cfg.progress
    )
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(start_step, total_steps):
        pairs = kl_pairs(schedule.step_indices(step))
        groups = micro_batches(pairs, runtime, train_cfg.micro_batch_size, train_cfg.grad_accum)
        z0 = kl_estimate("train", groups, global_batch)  # mismatched pairs, before the update
        sums = StepSums(runtime.device)
        local_tokens = 0
        for group in groups:
            indices = [i for i, _ in group]
            batch, keys = keyed_batch("train", [("x", i) for i in indices])
            local_tokens += int(policy.mask(batch).sum())
            ref_sums = reference(batch, keys)
            with loop.autocast(runtime.device, train_cfg.mixed_precision):
                token_logps = policy(batch)
            stats = sequence_stats(token_logps, batch)
            desirable = torch.tensor(
                [train_set[i]["label"] for i in indices], device=runtime.device
            )
            losses, rewards = kto_loss(
                stats.sums, ref_sums, desirable, z0, cfg.beta,
                cfg.desirable_weight, cfg.undesirable_weight,
            )  # fmt: skip
            loss = losses.sum() / global_batch
            loop.backward(loss * runtime.world_size, scaler)  # FSDP averages over processes
            good = desirable.double()
            sums.add("loss", loss)
            sums.add("desirable", good)
            sums.add("rewards/desirable", rewards * good)
            sums.add("rewards/undesirable", rewards * (1 - good))
            sums.add("logps/desirable", stats.sums.detach() * good)
            sums.add("logps/undesirable", stats.sums.detach() * (1 - good))
        grad_norm = loop.optimizer_step(
            policy, optimizer, scheduler, scaler, train_cfg.max_grad_norm
        )
        totals = sums.reduce(runtime)
        examples_seen += global_batch
        window_tokens += int(global_sum(local_tokens, runtime))
        done = step + 1

        # --- metrics and checkpoints ---
        if done % train_cfg.log_every == 0 or done == total_steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / max(elapsed, 1e-9)
            n_good = totals.pop("desirable")
            n_bad = global_batch - n_good
            record = {
                "loss": totals.pop("loss"),
                "kl": z0,
                "desirable_fraction": n_good / global_batch,
            }
            for name, value in totals.items():  # means over each kind; absent if none
                count = n_good if name.endswith("/desirable") else n_bad
                if count:
                    record[name] = value / count
            if "rewards/desirable" in record and "rewards/undesirable" in record:
                record["rewards/margin"] = (
                    record["rewards/desirable"] - record["rewards/undesirable"]
                )
            record.update(
                {
                    "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens_per_s,
                    "examples_seen": examples_seen,
                    "epoch": schedule.epoch_at(done),
                }
            )
            metrics.log(done, record, prefix="train/")
            progress.set_postfix(loss=f"{record['loss']:.4f}", kl=f"{z0:.3f}", refresh=False)
            window_start, window_tokens = time.perf_counter(), 0
        progress.update(1)
        loop.end_of_step(
            done, total_steps, train_cfg, metrics, evaluate if eval_set else None, save
        )
    progress.close()

    # --- final model ---
    evaluate_fn = evaluate if eval_set else None
    return loop.save_final(cfg, model, tokenizer, runtime, metrics, total_steps, evaluate_fn)
