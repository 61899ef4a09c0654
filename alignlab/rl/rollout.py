"""Rollouts for RL fine-tuning: K sampled responses per prompt, as a training batch.

    roll = rollout(model, tokenizer, prompts, samples_per_prompt=4, max_new_tokens=64,
                   temperature=1.0, top_p=1.0, seed=..., batch_size=32, scorer=policy)

Sampling is `alignlab.models.generation.generate` (batched, left-padded, KV cache, stop tokens,
per-batch seeds). Prompt i is repeated K times in a row, so sample n belongs to prompt
`n // K` (`group_ids`) and a (P·K,) reward vector reshapes to (P, K).

The responses then become one right-padded training batch (`alignlab.models.logprobs
.response_rows` + `collate`): prompt + response tokens, only the response (stop token
included) labelled. `old_logps` are the per-token log-probs of the sampled tokens under the
sampling policy, computed once by a teacher-forced `TokenLogProbs` pass (no grad, eval mode,
the training chunking and autocast), i.e. by exactly the code the loss later differentiates,
so at the first PPO iteration the ratio π_θ / π_old is 1 up to float summation order. They are
the log-probs of the untempered policy (temperature 1): with temperature != 1 the samples come
from softmax(logits / T) while the ratio, KL and entropy estimates use softmax(logits).

A vision-language policy (`images` given, `tokenizer` its processor) samples with
`alignlab.models.vlm_generation.generate_vlm`; the rollout keeps each prompt's processed images
(`vision`, one entry per prompt, shared by its K samples) and `Rollout.batch` adds them to every
forward's inputs, so the log-prob, reference and training passes are the text ones.

Stop strings are applied after sampling (`apply_stop_strings`): the text is cut before the
first stop string and the tokens after the one that completes it, and the response counts as
finished. Sampling itself still runs to a stop token or max_new_tokens (the time spent on
the cut tokens is wasted, the result is the same).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from alignlab.data.collate import collate
from alignlab.data.templates import Messages
from alignlab.models.generation import (
    Generation,
    generate,
    inference_mode,
    model_device,
    pad_token_id,
    stop_token_ids,
)
from alignlab.models.lm import TokenLogProbs
from alignlab.models.logprobs import response_rows
from alignlab.models.vlm_generation import encode_vlm_prompt, generate_vlm
from alignlab.training import distributed
from alignlab.training.loop import autocast


@dataclasses.dataclass
class Rollout:
    """N = P·K samples as a right-padded training batch (tensors on the CPU).

    Token tensors are (N, T) in the layout of `TokenLogProbs`: position t scores token t + 1,
    `mask` marks the response tokens (stop token included).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    old_logps: torch.Tensor
    """(N, T) float32 log π_old of each sampled response token, 0 elsewhere."""
    group_ids: torch.Tensor
    """(N,) index of the prompt each sample answers (n // K)."""
    finished: torch.Tensor
    """(N,) bool: ended by a stop token or stop string, not by max_new_tokens."""
    prompts: list[str | Messages]
    """The prompt of each sample (as given, not rendered)."""
    texts: list[str]
    """Decoded responses (without the stop token / stop string)."""
    generations: list[Generation]
    samples_per_prompt: int
    scored: bool = True
    """False: `old_logps` are zeros until the update's forward fills them (`rollout(score=False)`)."""
    sampler_logps: torch.Tensor | None = None
    """(N, T) float32 log-probs of the response tokens as the sampler computed them while
    sampling (`rollout(sampler_logps=True)`), 0 elsewhere; None when not recorded."""
    vision: list[dict[str, torch.Tensor]] | None = None
    """Per prompt (index `group_ids`), the processor's image tensors (pixel_values, ...) of a
    vision-language rollout, on the CPU; None for text."""

    @property
    def mask(self) -> torch.Tensor:
        """(N, T) bool: response-token positions."""
        return TokenLogProbs.mask({"labels": self.labels})

    @property
    def response_lengths(self) -> torch.Tensor:
        """(N,) number of response tokens (stop token included)."""
        return self.mask.sum(1)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, rows: Sequence[int] | torch.Tensor, device: torch.device) -> dict:
        """The model inputs of `rows`, trimmed to their longest sequence, on `device`, with
        their prompts' images (in row order) for a vision-language rollout."""
        index = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask[index].sum(1).max())
        batch = {
            key: getattr(self, key)[index, :width].to(device)
            for key in ("input_ids", "attention_mask", "labels", "position_ids")
        }
        if self.vision is not None:
            per_row = [self.vision[group] for group in self.group_ids[index].tolist()]
            for key in {key for inputs in per_row for key in inputs}:
                parts = [inputs[key] for inputs in per_row if key in inputs]
                batch[key] = torch.cat(parts).to(device)
        return batch


def apply_stop_strings(
    generation: Generation, tokenizer: Any, stop_strings: Sequence[str]
) -> Generation:
    """`generation` cut at the first stop string of its text (see the module docstring)."""
    hits = [(generation.text.find(s), s) for s in stop_strings if s]
    hits = [(position, s) for position, s in hits if position >= 0]
    if not hits:
        return generation
    position, stop = min(hits)
    ids = generation.response_ids

    def contains(n: int) -> bool:
        return stop in tokenizer.decode(ids[:n], skip_special_tokens=False)

    low, high = 1, len(ids)  # smallest prefix whose text contains the stop string
    while low < high:
        middle = (low + high) // 2
        if contains(middle):
            high = middle
        else:
            low = middle + 1
    logps = generation.sampler_logps
    return dataclasses.replace(
        generation, response_ids=list(ids[:low]), text=generation.text[:position], finished=True,
        sampler_logps=list(logps[:low]) if logps is not None else None,
    )  # fmt: skip


def token_logps(
    scorer: nn.Module,
    roll: Rollout,
    batch_size: int,
    mixed_precision: str = "no",
) -> torch.Tensor:
    """(N, T) float32 CPU per-token outputs of `scorer` (a `TokenLogProbs`: log-probs of the
    response tokens; a critic: values) on the rollout, teacher-forced in chunks of
    `batch_size` rows (`Rollout.batch`), eval mode, no grad.

    Under FSDP2 this is a collective: every rank must call it with the same number of chunks.
    """
    device = model_device(scorer)
    rows = len(roll)
    out = torch.zeros(roll.input_ids.shape, dtype=torch.float32)
    with inference_mode(scorer):
        for start in range(0, rows, batch_size):
            part = roll.batch(range(start, min(start + batch_size, rows)), device)
            width = part["input_ids"].shape[1]
            with autocast(device, mixed_precision):
                values = scorer(part)
            out[start : start + batch_size, :width] = values.float().cpu()
    distributed.reshard(scorer)
    return out


def rollout(
    policy_model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    *,
    stop_strings: Sequence[str] = (),
    scorer: nn.Module | None = None,
    mixed_precision: str = "no",
    generation_model: nn.Module | None = None,
    score: bool = True,
    sampler_logps: bool = False,
    images: Sequence[Sequence[Image.Image]] | None = None,
) -> Rollout:
    """Sample `samples_per_prompt` responses per prompt and score them (module docstring).

    Args:
        policy_model: the HF causal LM (or peft model) being trained.
        prompts: strings or message lists (rendered with the chat template).
        seed: generation seed (batch b of `generate` uses seed + b); derive it from
            (run seed, step) for resumable runs.
        batch_size: sequences per generation batch and per log-prob forward.
        stop_strings: cut each response at the first of these (after sampling).
        scorer: the `TokenLogProbs` the loss trains through (its chunk size; under FSDP2 the
            sharded root); default a fresh `TokenLogProbs(policy_model)`.
        mixed_precision: the training autocast ("no", "bf16", "fp16") for the log-prob pass.
        generation_model: the model that samples, when not `policy_model` itself (an unsharded
            copy under FSDP2); it must hold the same weights.
        score: compute `old_logps` now. A caller whose single update forward sees the same
            weights may pass False and fill them from that forward (zeros until then).
        sampler_logps: also keep the sampler's own log-probs of the sampled tokens (the
            generation forward's, for truncated importance sampling and the mismatch metrics).
        images: a vision-language policy's images, one list per prompt (in the order of its
            image parts); `tokenizer` is then its processor.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    repeated = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    sampler = generation_model if generation_model is not None else policy_model
    settings = dict(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        batch_size=batch_size, seed=seed, sampler_logps=sampler_logps,
    )  # fmt: skip
    vision = None
    if images is None:
        generations = generate(sampler, tokenizer, repeated, **settings)
    else:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} image lists for {len(prompts)} prompts")
        each = [prompt_images for prompt_images in images for _ in range(samples_per_prompt)]
        generations = generate_vlm(sampler, tokenizer, repeated, each, **settings)
        vision = [encode_vlm_prompt(tokenizer, p, i, k).vision for k, (p, i) in enumerate(
            zip(prompts, images)
        )]  # fmt: skip
        tokenizer = tokenizer.tokenizer
    if stop_strings:
        generations = [apply_stop_strings(g, tokenizer, stop_strings) for g in generations]
    pad_id = pad_token_id(tokenizer, stop_token_ids(policy_model, tokenizer))
    batch = collate(response_rows(generations), pad_id)
    roll = Rollout(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        position_ids=batch["position_ids"],
        old_logps=torch.zeros(batch["labels"].shape, dtype=torch.float32),
        group_ids=torch.arange(len(prompts)).repeat_interleave(samples_per_prompt),
        finished=torch.tensor([g.finished for g in generations], dtype=torch.bool),
        prompts=repeated,
        texts=[g.text for g in generations],
        generations=generations,
        samples_per_prompt=samples_per_prompt,
        scored=score,
        vision=vision,
    )
    if score:
        scorer = scorer if scorer is not None else TokenLogProbs(policy_model)
        roll.old_logps = token_logps(scorer, roll, batch_size, mixed_precision)
    if sampler_logps:  # the response tokens are the labelled positions, in order, per row
        recorded = torch.zeros(batch["labels"].shape, dtype=torch.float32)
        mask = TokenLogProbs.mask(batch)
        for row, generation in enumerate(generations):
            recorded[row, mask[row]] = torch.tensor(generation.sampler_logps, dtype=torch.float32)
        roll.sampler_logps = recorded
    return roll
