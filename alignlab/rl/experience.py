"""One step's experience: the prompts of the step, K samples each, their rewards (shaped:
missing-EOS penalty, clipping, batch normalisation), the optional gold reward, and the
reference's per-token log-probs, as CPU tensors the advantage estimators read.

    collect = Collector(...)                       # built by the run's set-up
    exp = collect(step)                            # an Experience
    exp.token_kl, exp.sequence_kl, exp.grouped(x)  # k1 per token / per response, (P, K) view
    exp.summary(runtime)                           # the step's means over all processes

The step's prompts are a pure function of (seed, step) (`BatchSchedule`), and so is the
generation seed (with the rank): a resumed run samples what the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from alignlab.ops import IGNORE_INDEX, masked_sum
from alignlab.rl.config import RLConfig
from alignlab.rl.kl import kl_k1
from alignlab.rl.prompts import PromptRow
from alignlab.rl.reference import RLReference
from alignlab.rl.rewards import RewardFn
from alignlab.rl.rollout import Rollout, rollout
from alignlab.training import distributed
from alignlab.training.batches import BatchSchedule, micro_batches


@dataclasses.dataclass
class Experience:
    """One step's rollout with everything the advantage estimators need (CPU tensors)."""

    rollout: Rollout
    scores: torch.Tensor
    """(N,) float32 reward used for training: penalised, clipped, normalised."""
    raw_rewards: torch.Tensor
    """(N,) the reward source's output."""
    gold: torch.Tensor | None
    ref_logps: torch.Tensor | None
    """(N, T) reference log-probs of the response tokens, or None without a reference."""
    timings: dict[str, float]

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.mask

    @property
    def token_kl(self) -> torch.Tensor:
        """(N, T) k1 = log π_old - log π_ref per response token (0 without a reference)."""
        if self.ref_logps is None:
            return torch.zeros_like(self.rollout.old_logps)
        return kl_k1(self.rollout.old_logps, self.ref_logps) * self.mask

    @property
    def sequence_kl(self) -> torch.Tensor:
        """(N,) Σ_t k1: the per-response KL estimate."""
        return self.token_kl.sum(1)

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) -> (P, K): one row per prompt."""
        return values.view(-1, self.rollout.samples_per_prompt)

    def summary(self, runtime: distributed.Runtime) -> dict[str, float]:
        """The step's means over all processes: reward (raw), its std, the training score,
        response length, finished fraction, entropy estimate (-mean log π_old per token),
        KL to the reference per response (Σ_t k1), gold when logged, the sample count, and the
        sampler-trainer mismatch when the sampler's log-probs were kept: mean |log π_sampler -
        log π_old| per token and Σ_t (log π_sampler - log π_old) per response (k1 of
        KL(π_sampler || π_old), the samples being the sampler's)."""
        roll, mask = self.rollout, self.mask
        parts = [
            self.raw_rewards.sum().item(),
            (self.raw_rewards.double() ** 2).sum().item(),
            self.scores.sum().item(),
            float(len(roll)),
            float(roll.response_lengths.sum()),
            float(roll.finished.sum()),
            -masked_sum(roll.old_logps, mask).item(),
            float(mask.sum()),
            self.sequence_kl.sum().item(),
            self.gold.sum().item() if self.gold is not None else 0.0,
        ]
        (
            reward_sum, reward_sq, score_sum, count, length_sum, finished,
            neg_logp, tokens, kl_sum, gold_sum,
        ) = distributed.sum_floats(parts, runtime)  # fmt: skip
        reward_mean = reward_sum / count
        summary = {
            "reward_mean": reward_mean,
            "reward_std": math.sqrt(max(reward_sq / count - reward_mean**2, 0.0)),
            "score_mean": score_sum / count,
            "response_length": length_sum / count,
            "finished_fraction": finished / count,
            "entropy": neg_logp / max(tokens, 1.0),
            "kl_ref": kl_sum / count,
            "samples": count,
        }
        if self.gold is not None:
            summary["gold_mean"] = gold_sum / count
        if roll.sampler_logps is not None:  # the sampler's log-probs against the trainer's
            gap = (roll.sampler_logps - roll.old_logps) * mask
            abs_sum, kl = distributed.sum_floats(
                [gap.abs().sum().item(), gap.sum().item()], runtime
            )
            summary["sampler_logp_diff"] = abs_sum / max(tokens, 1.0)  # mean |Δ log-prob|
            summary["sampler_kl"] = kl / count  # k1 of KL(sampler || trainer), per response
        return summary


def gather_rows(
    runtime: distributed.Runtime, *tensors: torch.Tensor
) -> tuple[torch.Tensor | tuple[slice, slice], ...]:
    """Every process's rows of (N, ...) CPU tensors, concatenated in rank order (token tensors
    right-padded with 0 to the widest), plus the index of this process's own block:
    `full[mine]` is this process's (N, T_local) part. One process: the tensors unchanged."""
    width = max((t.shape[1] for t in tensors if t.dim() == 2), default=0)
    mine = (slice(None), slice(0, width))
    if not runtime.distributed:
        return (*tensors, mine)
    parts = distributed.all_gather_objects([t.cpu() for t in tensors], runtime)
    widest = max((t.shape[1] for part in parts for t in part if t.dim() == 2), default=0)

    def padded(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, widest - t.shape[1])) if t.dim() == 2 else t

    gathered = tuple(torch.cat([padded(part[i]) for part in parts]) for i in range(len(tensors)))
    rows = tensors[0].shape[0]
    mine = (slice(runtime.rank * rows, (runtime.rank + 1) * rows), slice(0, width))
    return (*gathered, mine)


@dataclasses.dataclass
class Collector:
    """Collects a step's `Experience` (module docstring) from the run's pieces."""

    rl: RLConfig
    rows: list[PromptRow]
    schedule: BatchSchedule
    prompts_per_rank: int
    runtime: distributed.Runtime
    tokenizer: Any
    model: nn.Module
    """The HF model being trained (under FSDP2 the sharded one)."""
    scorer: nn.Module
    """The `TokenLogProbs` the loss trains through (scores old log-probs)."""
    generation_model: nn.Module | None
    """An unsharded copy that samples under FSDP2 (HF generate cannot run sharded); None."""
    reference: RLReference | None
    reward_fn: RewardFn
    gold_fn: RewardFn | None
    mixed_precision: str
    seed: Callable[[int], int]
    """step -> generation seed of this process."""
    vision: bool = False
    """A vision-language policy: `tokenizer` is its processor and each prompt's images
    (`PromptRow.images`) are sampled with."""

    def __call__(self, step: int, score_old_logps: bool = True, draw: int = 0) -> Experience:
        """The step's experience; `score_old_logps=False` leaves log π_old to the update's
        forward (one optimizer step per rollout only: `MicroBatch.old_logps`). `draw` > 0:
        another batch for the same step (DAPO's dynamic sampling), its prompts drawn at random
        from all rows and its samples seeded by (step, draw)."""
        rl, runtime = self.rl, self.runtime
        if draw:
            generator = torch.Generator().manual_seed(self.seed(step) + draw)
            indices = torch.randint(len(self.rows), (self.prompts_per_rank,), generator=generator)
            indices = indices.tolist()
        else:
            indices = micro_batches(
                self.schedule.step_indices(step), runtime, self.prompts_per_rank, 1
            )[0]
        rows = [self.rows[i] for i in indices]
        start = time.perf_counter()
        if self.generation_model is not None:  # refresh the sampling copy: one all-gather
            options = StateDictOptions(full_state_dict=True, cpu_offload=False)
            self.generation_model.load_state_dict(get_model_state_dict(self.model, options=options))
        roll = rollout(
            self.model,
            self.tokenizer,
            [row.prompt for row in rows],
            rl.samples_per_prompt,
            rl.max_new_tokens,
            rl.temperature,
            rl.top_p,
            seed=self.seed(step) + 7_919 * draw,
            batch_size=rl.generation_batch_size,
            stop_strings=rl.stop_strings,
            scorer=self.scorer,
            mixed_precision=self.mixed_precision,
            generation_model=self.generation_model,
            score=score_old_logps,
            sampler_logps=True,  # cheap, and the sampler-trainer mismatch is logged every step
            images=[row.load_images() for row in rows] if self.vision else None,
        )
        generated = time.perf_counter()
        extras = [row.extras for row in rows for _ in range(rl.samples_per_prompt)]
        raw = torch.tensor(self.reward_fn(roll.prompts, roll.texts, extras), dtype=torch.float32)
        gold = None
        if self.gold_fn is not None:
            gold = torch.tensor(self.gold_fn(roll.prompts, roll.texts, extras))
        scores = raw - rl.missing_eos_penalty * (~roll.finished).float()
        if rl.reward_clip:
            scores = scores.clamp(-rl.reward_clip, rl.reward_clip)
        if rl.reward_normalization == "batch":
            total, total_sq, count = distributed.sum_floats(
                [scores.sum().item(), (scores.double() ** 2).sum().item(), len(scores)], runtime
            )
            mean = total / count
            std = math.sqrt(max(total_sq / count - mean**2, 0.0))
            scores = (scores - mean) / (std + 1e-8)
        rewarded = time.perf_counter()
        ref_logps = None
        if self.reference is not None:
            ref_logps = self.reference(roll, rl.generation_batch_size)
        return Experience(
            rollout=roll,
            scores=scores.float(),
            raw_rewards=raw,
            gold=gold,
            ref_logps=ref_logps,
            timings={
                "generation_s": generated - start,
                "reward_s": rewarded - generated,
                "reference_s": time.perf_counter() - rewarded,
            },
        )


def select_groups(parts: list[Experience], picks: list[tuple[int, int]]) -> Experience:
    """One Experience of the chosen groups, `picks` = (index into `parts`, group index), in
    that order: each group's K samples, token tensors right-padded to the widest part."""
    k = parts[0].rollout.samples_per_prompt
    rows = [(part, group * k + j) for part, group in picks for j in range(k)]
    width = max(part.rollout.input_ids.shape[1] for part in parts)

    def stack(get: Callable[[Experience], torch.Tensor], pad: float = 0) -> torch.Tensor:
        tensors = [get(parts[part])[row] for part, row in rows]
        if tensors[0].dim() == 1:
            tensors = [
                torch.nn.functional.pad(t, (0, width - t.shape[0]), value=pad) for t in tensors
            ]
        return torch.stack(tensors)

    def listed(get: Callable[[Experience], list]) -> list:
        return [get(parts[part])[row] for part, row in rows]

    roll = Rollout(
        input_ids=stack(lambda e: e.rollout.input_ids),
        attention_mask=stack(lambda e: e.rollout.attention_mask),
        labels=stack(lambda e: e.rollout.labels, pad=IGNORE_INDEX),
        position_ids=stack(lambda e: e.rollout.position_ids),
        old_logps=stack(lambda e: e.rollout.old_logps),
        group_ids=torch.arange(len(picks)).repeat_interleave(k),
        finished=stack(lambda e: e.rollout.finished),
        prompts=listed(lambda e: e.rollout.prompts),
        texts=listed(lambda e: e.rollout.texts),
        generations=listed(lambda e: e.rollout.generations),
        samples_per_prompt=k,
        scored=all(part.rollout.scored for part in parts),
        sampler_logps=stack(lambda e: e.rollout.sampler_logps)
        if all(part.rollout.sampler_logps is not None for part in parts)
        else None,
        vision=[parts[part].rollout.vision[group] for part, group in picks]
        if all(part.rollout.vision is not None for part in parts)
        else None,
    )
    with_gold = all(part.gold is not None for part in parts)
    with_ref = all(part.ref_logps is not None for part in parts)
    timings = {key: sum(part.timings[key] for part in parts) for key in parts[0].timings}
    return Experience(
        rollout=roll,
        scores=stack(lambda e: e.scores),
        raw_rewards=stack(lambda e: e.raw_rewards),
        gold=stack(lambda e: e.gold) if with_gold else None,
        ref_logps=stack(lambda e: e.ref_logps) if with_ref else None,
        timings=timings,
    )
