"""Teacher-forced sequence log-probs of generated responses: log π(y | x) summed over y's tokens.

Each (prompt, response) becomes one row with the prompt tokens unlabelled and the response
tokens (stop token included) labelled, batched with `collate` and scored with
`TokenLogProbs`, the same code the losses train through. Scoring the same token ids under
another model (a reference) needs the same tokenizer vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from alignlab.data.collate import collate
from alignlab.models.generation import (
    Generation,
    inference_mode,
    length_batches,
    model_device,
    pad_token_id,
    stop_token_ids,
)
from alignlab.models.lm import TokenLogProbs
from alignlab.ops import IGNORE_INDEX, masked_sum


def response_rows(generations: Sequence[Generation]) -> list[dict[str, list[int]]]:
    """{"input_ids", "labels"} rows: prompt + response, only the response labelled."""
    rows = []
    for index, generation in enumerate(generations):
        if not generation.prompt_ids:
            raise ValueError(f"generation {index} has no prompt tokens")
        prompt, response = list(generation.prompt_ids), list(generation.response_ids)
        rows.append(
            {"input_ids": prompt + response, "labels": [IGNORE_INDEX] * len(prompt) + response}
        )
    return rows


def sequence_logps(
    model: nn.Module, tokenizer: Any, generations: Sequence[Generation], batch_size: int = 32
) -> torch.Tensor:
    """(N,) float32 on the CPU: log π(response | prompt) of each generation (0 for an empty
    response), batched by length; the model is run in eval mode without gradients."""
    if not generations:
        return torch.zeros(0, dtype=torch.float32)
    rows = response_rows(generations)
    pad_id = pad_token_id(tokenizer, stop_token_ids(model, tokenizer))
    device = model_device(model)
    scorer = TokenLogProbs(model)
    out = torch.zeros(len(rows), dtype=torch.float32)
    with inference_mode(model):
        for members in length_batches([len(row["input_ids"]) for row in rows], batch_size):
            batch = collate([rows[i] for i in members], pad_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            token_logps = scorer(batch)  # (B, T)
            sums = masked_sum(token_logps, TokenLogProbs.mask(batch), dim=1)
            out[members] = sums.float().cpu()
    return out
