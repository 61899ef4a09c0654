"""The mini-batch loop of every RL update, the policy's and the critic's alike.

    stats = minibatch_update(module, optimizer, scheduler, roll, token_losses, token_mean,
                             sizes, runtime, generator)

`sizes.passes` passes over the rollout (PPO epochs) in shuffled mini-batches of
`sizes.mini_batch` samples of this process, one optimizer step each, every mini-batch split
into micro-batches of `sizes.micro_batch`. For each micro-batch the caller's
`token_losses(mb)` runs the forward and returns the (B, T) per-token losses and detached
per-token diagnostics (e.g. clipped or not); `aggregate(losses, mask, tokens=, sequences=)`
(`alignlab.losses.policy`) turns the losses into this micro-batch's share of the mini-batch
loss, with the mini-batch's token and sequence counts over all processes as denominators, so
neither the micro-batch size nor the number of processes changes the gradient.

Guard-rails: a non-finite micro-batch loss is skipped on every process (they agree) and
counted; a non-finite gradient norm skips the optimizer step. The gradient is clipped at
`sizes.max_grad_norm` (0 = not clipped). `extra_loss()`, when given, is called once per
optimizer step after the mini-batch's backward passes and back-propagated into the same
gradient (PPO-ptx); it returns this process's share of its term.

Returns the mean loss per optimizer step (the global loss), every diagnostic averaged over
the response tokens of all processes and passes, the mean gradient norm, the skip counts,
the learning rate after the update, the time, and `extra_loss` (mean) when given.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from alignlab.losses.policy import truncated_is_weights
from alignlab.models.lm import TokenLogProbs
from alignlab.ops import masked_sum
from alignlab.rl.rollout import Rollout
from alignlab.training import distributed
from alignlab.training.loop import autocast


@dataclasses.dataclass(frozen=True)
class UpdateSizes:
    """How one rollout is cut into optimizer steps (this process's share)."""

    passes: int
    """Passes over the rollout (`rl.num_iterations`)."""
    mini_batch: int
    """Samples of this process per optimizer step."""
    micro_batch: int
    """Samples per forward / backward (`train.micro_batch_size`)."""
    max_grad_norm: float
    """Gradient clipping threshold; 0 = no clipping."""
    mixed_precision: str

    def optimizer_steps(self, samples: int) -> int:
        """Optimizer steps for a rollout of `samples` samples on this process."""
        return self.passes * (samples // self.mini_batch)


@dataclasses.dataclass
class MicroBatch:
    """One micro-batch of a rollout: model inputs on the device and the response mask."""

    roll: Rollout
    rows: torch.Tensor
    """(B,) indices into the rollout."""
    batch: dict[str, torch.Tensor]
    """Model inputs of the rows, trimmed to their longest sequence, on the device."""
    mask: torch.Tensor
    """(B, T) response tokens."""
    mixed_precision: str

    @property
    def width(self) -> int:
        return int(self.batch["input_ids"].shape[1])

    def take(self, values: torch.Tensor) -> torch.Tensor:
        """This micro-batch's rows of an (N, T) per-token or (N, 1) per-sample CPU tensor of
        the rollout, trimmed to the micro-batch's width, on the device."""
        rows = values[self.rows]
        if rows.dim() == 2 and rows.shape[1] != 1:
            rows = rows[:, : self.width]
        return rows.to(self.mask.device)

    def forward(self, module: nn.Module) -> torch.Tensor:
        """(B, T) float32 per-token output of `module` (log-probs or values), with grad, under
        the training autocast."""
        with autocast(self.mask.device, self.mixed_precision):
            out = module(self.batch)
        return out.float()

    def tis_weights(self, old_logps: torch.Tensor, cap: float, level: str) -> torch.Tensor | float:
        """(B, T) truncated importance weights min(π_old / π_sampler, cap) against the
        sampler's own log-probs (`alignlab.losses.policy.truncated_is_weights`, per token or
        per response), for a sampler that is not the trainer; the scalar 1.0 when `cap` is 0
        (off), so the recipes' `losses * weights` costs nothing then."""
        if not cap:
            return 1.0
        if self.roll.sampler_logps is None:
            raise ValueError("truncated importance sampling needs the sampler's log-probs")
        sampler = self.take(self.roll.sampler_logps)
        return truncated_is_weights(old_logps, sampler, self.mask, cap, level)

    def old_logps(self, logps: torch.Tensor) -> torch.Tensor:
        """(B, T) log π_old of the sampled tokens. A rollout that was not scored (one optimizer
        step per rollout: its forward runs on the sampling weights) takes them, detached, from
        this forward `logps` and keeps them for the step's statistics."""
        if not self.roll.scored:
            self.roll.old_logps[self.rows, : self.width] = logps.detach().cpu()
        return self.take(self.roll.old_logps)


TokenLosses = Callable[[MicroBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""mb -> ((B, T) per-token losses with grad, {name: (B, T) detached per-token diagnostic})."""
Aggregation = Callable[..., torch.Tensor]
"""(losses, mask, *, tokens, sequences) -> () share of the mini-batch loss."""


def minibatch_update(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    roll: Rollout,
    token_losses: TokenLosses,
    aggregate: Aggregation,
    sizes: UpdateSizes,
    runtime: distributed.Runtime,
    generator: torch.Generator,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    loss_mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mini-batch updates of `module` on `roll` (module docstring); returns diagnostics.

    loss_mask: (N, T) bool, the response tokens that count in the loss and its denominators
        (DAPO's overlong filtering drops truncated responses); None = every response token.
    """
    steps = sizes.optimizer_steps(len(roll))
    if not roll.scored and steps != 1:
        raise ValueError("a rollout without old log-probs allows one optimizer step, not more")
    start = time.perf_counter()
    device, world = runtime.device, runtime.world_size
    mask_all = roll.mask if loss_mask is None else roll.mask & loss_mask
    totals: dict[str, float] = {}  # diagnostics: masked sums over tokens
    loss_sum = extra_sum = tokens_seen = 0.0
    skipped_losses = skipped_steps = 0
    grad_norms: list[float] = []
    module.train()
    for _ in range(sizes.passes):
        order = torch.randperm(len(roll), generator=generator)
        for first in range(0, len(roll), sizes.mini_batch):
            rows = order[first : first + sizes.mini_batch]
            tokens, sequences = distributed.sum_floats(
                [float(mask_all[rows].sum()), float(len(rows))], runtime
            )
            for chunk in rows.split(sizes.micro_batch):
                batch = roll.batch(chunk, device)
                mask = TokenLogProbs.mask(batch)
                if loss_mask is not None:
                    mask = mask & loss_mask[chunk, : mask.shape[1]].to(device)
                mb = MicroBatch(roll, chunk, batch, mask, sizes.mixed_precision)
                losses, diagnostics = token_losses(mb)
                loss = aggregate(losses, mb.mask, tokens=tokens, sequences=sequences)
                finite = distributed.sum_floats([float(torch.isfinite(loss))], runtime)[0]
                if finite < world:
                    skipped_losses += 1
                    distributed.reshard(module)
                    continue
                (loss * world).backward()  # FSDP averages gradients; we want their sum
                loss_sum += loss.detach().double().item()
                tokens_seen += float(mb.mask.sum())
                for name, value in diagnostics.items():
                    total = masked_sum(value.detach().double(), mb.mask).item()
                    totals[name] = totals.get(name, 0.0) + total
            if extra_loss is not None:
                extra = extra_loss()
                (extra * world).backward()
                extra_sum += extra.detach().double().item()
            max_norm = sizes.max_grad_norm or math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
            if torch.isfinite(grad_norm):
                optimizer.step()
                grad_norms.append(float(grad_norm))
            else:
                skipped_steps += 1
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
    roll.scored = True
    names = sorted(totals)
    summed = distributed.sum_floats(
        [loss_sum, extra_sum, tokens_seen] + [totals[n] for n in names], runtime
    )
    loss_total, extra_total, counted = summed[:3]
    stats = {
        "loss": loss_total / steps,  # each process holds its share of the global loss
        **{name: value / max(counted, 1.0) for name, value in zip(names, summed[3:])},
        "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
        "skipped_nonfinite_losses": skipped_losses,  # every process skips the same ones
        "skipped_optimizer_steps": skipped_steps,
        "lr": scheduler.get_last_lr()[0],
        "update_s": time.perf_counter() - start,
    }
    if extra_loss is not None:
        stats["extra_loss"] = extra_total / steps
    return stats
