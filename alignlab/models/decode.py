"""The decode loop under `alignlab.models.generation.generate`: KV cache, sampling, early exit.

    new_tokens, finished = decode(model, input_ids, attention_mask, max_new_tokens=64,
                                  temperature=1.0, top_p=1.0, stop_ids={eos})

Why not HF `generate`: on a CPU at a 32,000-token vocabulary its `torch.multinomial` costs
~16 ms per step for 32 rows, more than the model's forward (~10 ms); sampling by inverse CDF
(one uniform per row, a cumulative sum and a binary search) draws from the same distribution
in ~0.4 ms. The loop also drops a row from the batch (and its KV cache) as soon as it emits a
stop token, where `generate` keeps computing finished rows until the last one stops.

The cache is whatever the model builds on its first call with `use_cache=True` (a
`DynamicCache` for most models, sliding-window or hybrid caches where the architecture needs
them); finished rows are pruned with `Cache.batch_select_indices` when the cache has it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from alignlab.models.forward_inputs import forward_arguments, model_inputs, prompt_positions
from alignlab.models.loading import unwrap_peft


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """`logits` (B, V) with the tokens outside the top-p nucleus set to -inf.

    The nucleus is the smallest set of most probable tokens whose probability reaches top_p
    (Holtzman et al. 2020), as HF's TopPLogitsWarper: sorted ascending, a token goes when the
    cumulative probability up to and including it is <= 1 - top_p; the top token always stays.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cumulative <= 1 - top_p
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_next_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, draws: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) token ids drawn from softmax(logits / temperature) restricted to the top-p nucleus;
    temperature 0 is greedy (argmax). `draws`: (B,) float64 uniforms in [0, 1), one per row;
    None draws them from the global torch RNG.

    Inverse-CDF sampling: token i is chosen when u·Z falls in [c_{i-1}, c_i), with c the
    cumulative sum of the probabilities (float64, so 32,000 terms lose nothing that matters)
    and Z = c_V; a zero-probability token has an empty interval and is never chosen.
    """
    if temperature == 0:
        return logits.argmax(-1)
    scaled = top_p_filter(logits.float() / temperature, top_p)
    cumulative = scaled.softmax(-1).double().cumsum(-1)
    if draws is None:
        draws = torch.rand(cumulative.shape[0], dtype=torch.float64, device=logits.device)
    draw = draws.to(device=logits.device, dtype=torch.float64).unsqueeze(1)
    tokens = torch.searchsorted(cumulative, draw * cumulative[:, -1:], right=True)
    return tokens.squeeze(1).clamp(max=logits.shape[-1] - 1)


def cache_argument(model: nn.Module) -> str:
    """The forward keyword of the KV cache: `cache` in recent transformers, `past_key_values`
    before (the old name still works there but warns)."""
    return "cache" if "cache" in forward_arguments(type(unwrap_peft(model))) else "past_key_values"


def returned_cache(output: object) -> object:
    """The KV cache a forward returned, under either name (see `cache_argument`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def decode(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: Collection[int],
    uniforms: torch.Tensor | None = None,
    sampler_logps: list[list[float]] | None = None,
    prompt_inputs: Mapping[str, torch.Tensor] | None = None,
    banned_ids: Collection[int] = (),
) -> tuple[list[list[int]], list[bool]]:
    """Sample up to `max_new_tokens` tokens after each left-padded prompt row.

    Returns each row's new tokens (through its first stop token, which is kept) and whether it
    stopped on a stop token. Call under `torch.no_grad()` with the model in eval mode.
    `uniforms`: (rows, max_new_tokens) float64 in [0, 1), the draw of each row at each step
    (a row's tokens then depend only on its own logits and draws, not on the other rows);
    None: the global torch RNG. `sampler_logps`, when a list, receives one list per row: the
    log-prob of each new token under the untempered logits of this forward (what an inference
    engine reports as the sampler's log-probs; truncated importance sampling compares them
    with the trainer's). `prompt_inputs`: further keywords of the prompt's forward only (a
    vision-language model's pixel_values: the images enter the KV cache with the prompt, and
    the steps after it feed tokens alone). `banned_ids`: tokens never sampled, their logits -inf
    for the draw only (`sampler_logps` stay those of the untouched logits): a VLM's image
    placeholder, which a response cannot hold, since a sequence fed back with its images needs
    an image for every placeholder.
    """
    rows = input_ids.shape[0]
    new_tokens: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows
    active = list(range(rows))  # batch position -> original row
    cache_key = cache_argument(model)
    keep_last = "logits_to_keep" in forward_arguments(type(unwrap_peft(model)))
    inputs = model_inputs(
        model, {"input_ids": input_ids, "attention_mask": attention_mask, **(prompt_inputs or {})}
    )
    positions = prompt_positions(model, inputs)  # (B, T), or (3, B, T) for 3-D rotary ones
    output = model(
        **inputs,
        position_ids=positions,
        use_cache=True,
        **({"logits_to_keep": 1} if keep_last else {}),
    )
    cache = returned_cache(output)
    prunable = hasattr(cache, "batch_select_indices")
    positions = positions[..., -1:]
    if uniforms is not None:
        uniforms = uniforms.to(input_ids.device)
    banned = torch.tensor(sorted(banned_ids), dtype=torch.long, device=input_ids.device)
    for step in range(max_new_tokens):
        draws = uniforms[:, step] if uniforms is not None else None
        allowed = output.logits[:, -1, :]
        if len(banned):
            allowed = allowed.index_fill(1, banned, float("-inf"))
        tokens = sample_next_tokens(allowed, temperature, top_p, draws)
        if sampler_logps is not None:
            logits = output.logits[:, -1, :].float()
            picked = logits.gather(1, tokens[:, None]).squeeze(1) - logits.logsumexp(-1)
            picked = picked.tolist()
        still: list[int] = []
        for position, token in enumerate(tokens.tolist()):
            row = active[position]
            if finished[row]:  # only when the cache could not be pruned
                continue
            new_tokens[row].append(token)
            if sampler_logps is not None:
                sampler_logps[row].append(picked[position])
            if token in stop_ids:
                finished[row] = True
            else:
                still.append(position)
        if not still or step == max_new_tokens - 1:
            break
        if prunable and len(still) < len(active):
            keep = torch.tensor(still, device=input_ids.device)
            cache.batch_select_indices(keep)
            active = [active[position] for position in still]
            tokens, attention_mask = tokens[keep], attention_mask[keep]
            positions = positions.index_select(-2, keep)
            if uniforms is not None:
                uniforms = uniforms[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], 1)
        positions = positions + 1
        output = model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **{cache_key: cache},
        )
        cache = returned_cache(output)
    return new_tokens, finished
