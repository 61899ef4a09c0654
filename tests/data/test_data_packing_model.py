"""Packed rows do not leak attention across examples: a tiny Llama gives every token of a packed
row the same logits as when its example runs alone.

The model gets position_ids (restarting at 0 per example), attention_mask=None and
use_cache=False; transformers then builds a block-diagonal causal mask from the position ids
(`masking_utils.find_packed_sequence_indices`). With a cache (use_cache left at its default)
transformers skips that detection, so the trainer must pass use_cache=False.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.data.collate import collate, pack_examples

VOCAB = 96


def tiny_llama(attn_implementation):
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()


def examples(lengths):
    generator = torch.Generator().manual_seed(0)
    result = []
    for length in lengths:
        ids = torch.randint(4, VOCAB, (length,), generator=generator).tolist()
        result.append({"input_ids": ids, "labels": ids})
    return result


def boundaries(position_ids):
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return list(zip(starts, starts[1:]))


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_packed_logits_equal_logits_alone(attn_implementation):
    model = tiny_llama(attn_implementation)
    items = examples([7, 5, 9, 3, 6, 11, 2])
    rows = pack_examples(items, 16)
    batch = collate(rows, pad_token_id=0)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape[0] >= 3  # several rows, several examples per row, padding

    logits = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=None,
        use_cache=False,
    ).logits

    checked = 0
    for b, row in enumerate(rows):
        for start, end in boundaries(row["position_ids"]):
            alone = model(input_ids=torch.tensor([row["input_ids"][start:end]])).logits[0]
            torch.testing.assert_close(logits[b, start:end], alone, atol=1e-5, rtol=0)
            checked += end - start
    assert checked == sum(len(item["input_ids"]) for item in items)

    # the comparison is sensitive: one causal mask over the whole row does leak
    leaky = model(input_ids=batch["input_ids"], use_cache=False).logits
    assert not torch.allclose(leaky, logits, atol=1e-3)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_padded_batch_logits_equal_logits_alone(attn_implementation):
    model = tiny_llama(attn_implementation)
    items = examples([7, 3, 5])
    batch = collate(items, pad_token_id=0)
    logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
    for b, item in enumerate(items):
        n = len(item["input_ids"])
        alone = model(input_ids=torch.tensor([item["input_ids"]])).logits[0]
        torch.testing.assert_close(logits[b, :n], alone, atol=1e-5, rtol=0)
