"""Batched sampling from a causal LM: left padding, KV cache, stop tokens, per-batch seeds.

`generate` renders each prompt (`render_prompt`: the chat template plus the generation prompt
for a message list, a string unchanged), tokenizes it the way training does
(`tokenize_segments`: BOS when the tokenizer adds one), sorts prompts by length into batches,
left-pads each batch and samples with `alignlab.models.decode.decode` (our own KV-cache loop,
faster than HF `generate` on CPU). Results come back in the input order.

The sampling distribution is exactly softmax(logits / temperature) restricted to the top-p
nucleus: the model's own `generation_config` (a hub model's top_k=20, repetition_penalty,
min_new_tokens, ...) plays no part, so log-probs computed afterwards are those of the
distribution that was sampled (what a KL estimate needs). Only its stop tokens are used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from alignlab.data.templates import Messages, render_prompt
from alignlab.data.tokenize import tokenize_segments
from alignlab.models.decode import decode
from alignlab.models.loading import unwrap_peft

logger = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"
"""ChatML end-of-turn marker: a stop token whenever the tokenizer has it as a single token."""


@dataclass
class Generation:
    """One sampled response.

    `response_ids` are the generated tokens without padding, ending with the stop token when
    `finished` (kept so that its log-prob counts in sequence log-probs); `text` is their
    decoding without that stop token (other special tokens are kept as text).
    """

    prompt_text: str
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finished: bool
    """Stopped by a stop token (EOS / end of turn) rather than by max_new_tokens."""
    sampler_logps: list[float] | None = None
    """Per response token, its log-prob under the sampling forward's untempered logits
    (`generate(..., sampler_logps=True)`); None when not recorded."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_text": self.prompt_text,
            "prompt_ids": list(self.prompt_ids),
            "response_ids": list(self.response_ids),
            "text": self.text,
            "finished": self.finished,
        }


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def stop_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """Token ids that end a response: the model's generation_config eos_token_id (int or list),
    the tokenizer's EOS, and `<|im_end|>` when it is a single token of the vocabulary."""
    ids: list[int] = []
    config = getattr(unwrap_peft(model), "generation_config", None)
    if config is not None:
        ids.extend(_as_list(getattr(config, "eos_token_id", None)))
    ids.extend(_as_list(getattr(tokenizer, "eos_token_id", None)))
    end_of_turn = (
        tokenizer.get_vocab().get(END_OF_TURN) if hasattr(tokenizer, "get_vocab") else None
    )
    if end_of_turn is not None:
        ids.append(int(end_of_turn))
    unique = list(dict.fromkeys(ids))
    if not unique:
        raise ValueError(
            "no stop token: the tokenizer has no eos_token and the model's generation_config no "
            "eos_token_id, so responses could only end at max_new_tokens"
        )
    return unique


def pad_token_id(tokenizer: Any, stop_ids: Sequence[int]) -> int:
    """The tokenizer's pad token, else its (first) stop token."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else int(stop_ids[0])


def prompt_token_ids(tokenizer: Any, prompt_text: str) -> list[int]:
    """Token ids of a rendered prompt, as training tokenizes it (BOS when the tokenizer adds one)."""
    ids, _ = tokenize_segments(tokenizer, [(prompt_text, False)])
    return ids


def row_uniforms(seed: int, steps: int) -> torch.Tensor:
    """(steps,) float64 uniforms in [0, 1) from a CPU generator seeded with `seed`: one
    prompt's draws, step by step (`decode`'s `uniforms`)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(steps, dtype=torch.float64, generator=generator)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, ties by position)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (len(rows), longest) long tensors on the CPU: each
    row right-aligned, pad_id and mask 0 before it (a decoder continues every row at once)."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() and no_grad for the body; the training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    sampler_logps: bool = False,
) -> list[Generation]:
    """Sample one response per prompt (a string, or a message list rendered with the chat
    template and its generation prompt), in the input order.

    temperature 0 is greedy decoding. Prompts are sorted by token length into batches of
    `batch_size` (left-padded, KV cache); before batch b the torch seed is set to `seed + b`,
    so the results depend only on the seed, the prompts and batch_size. With `seeds` (one per
    prompt) each prompt draws its uniforms from its own generator seeded with its seed instead
    (`seed` is unused and the global RNG untouched): its response depends only on the model,
    the prompt and its seed, not on batch_size, the order or the other prompts (up to the
    float rounding of padded batches), and two models given the same seeds sample with the
    same random numbers. Responses stop at the stop tokens of `stop_token_ids` or after
    max_new_tokens. `sampler_logps`: record each token's log-prob as the sampler saw it.
    """
    check_sampling(len(prompts), max_new_tokens, temperature, top_p, seeds)
    texts = [render_prompt(tokenizer, prompt) for prompt in prompts]
    encoded = [prompt_token_ids(tokenizer, text) for text in texts]
    for index, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {index} is empty: there is nothing to generate from")
    return decode_prompts(
        model, tokenizer, texts, encoded, max_new_tokens, temperature, top_p, batch_size,
        seed, seeds, sampler_logps,
    )  # fmt: skip


def check_sampling(
    n_prompts: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seeds: Sequence[int] | None,
) -> None:
    """Refuse sampling settings `decode_prompts` cannot honour."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if seeds is not None and len(seeds) != n_prompts:
        raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")


def decode_prompts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    encoded: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    seeds: Sequence[int] | None,
    sampler_logps: bool,
    batch_inputs: Callable[[list[int]], dict[str, torch.Tensor]] | None = None,
    banned_ids: Collection[int] = (),
) -> list[Generation]:
    """The sampling loop of `generate` over prompts already rendered (`texts`) and tokenized
    (`encoded`): length-sorted batches, left padding, the seeds, `decode`, one `Generation`
    per prompt in the input order. `batch_inputs(members)`: further inputs of a batch's prompt
    forward (a vision-language model's images); `banned_ids`: tokens never sampled."""
    stop_ids = stop_token_ids(model, tokenizer)
    stop_set = set(stop_ids)
    pad_id = pad_token_id(tokenizer, stop_ids)
    device = model_device(model)
    results: list[Generation | None] = [None] * len(encoded)
    batches = length_batches([len(ids) for ids in encoded], batch_size)
    with inference_mode(model):
        for batch_index, members in enumerate(batches):
            input_ids, attention_mask = left_padded([encoded[i] for i in members], pad_id)
            uniforms = None
            if seeds is not None:
                uniforms = torch.stack([row_uniforms(seeds[i], max_new_tokens) for i in members])
            else:
                torch.manual_seed(seed + batch_index)
            recorded = [[] for _ in members] if sampler_logps else None
            new_tokens, finished = decode(
                model,
                input_ids.to(device),
                attention_mask.to(device),
                max_new_tokens,
                temperature,
                top_p,
                stop_set,
                uniforms,
                sampler_logps=recorded,
                prompt_inputs=batch_inputs(members) if batch_inputs is not None else None,
                banned_ids=banned_ids,
            )
            for row, i in enumerate(members):
                response = new_tokens[row]
                shown = response[:-1] if finished[row] else response
                results[i] = Generation(
                    prompt_text=texts[i],
                    prompt_ids=list(encoded[i]),
                    response_ids=response,
                    text=tokenizer.decode(shown, skip_special_tokens=False),
                    finished=finished[row],
                    sampler_logps=recorded[row] if recorded is not None else None,
                )
            logger.debug("generated batch %d/%d", batch_index + 1, len(batches))
    return [result for result in results if result is not None]
