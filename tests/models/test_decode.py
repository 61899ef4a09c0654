"""decode(): inverse-CDF sampling against HF's warpers, and pruning finished rows."""

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from alignlab.eval.harness import load_for_eval
from alignlab.models.decode import decode, sample_next_tokens, top_p_filter


@pytest.mark.parametrize("top_p", [0.3, 0.75, 0.9, 1.0])
def test_top_p_filter_matches_hf_warper(top_p):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    expected = TopPLogitsWarper(top_p)(None, logits.clone())
    torch.testing.assert_close(top_p_filter(logits, top_p), expected)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_sampling_frequencies_match_the_exact_distribution(temperature, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, float("-inf")])
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits[None]))
    exact = warped.softmax(-1)[0].double()
    torch.manual_seed(0)
    draws = 200_000
    tokens = sample_next_tokens(logits.expand(draws, -1), temperature, top_p)
    freq = torch.bincount(tokens, minlength=len(logits)).double() / draws
    sigma = (exact * (1 - exact) / draws).sqrt()
    assert (freq - exact).abs().max() <= 5 * sigma.max() + 1e-12
    assert freq[exact == 0].sum() == 0  # excluded tokens (-inf, outside the nucleus) never drawn


def test_greedy_is_argmax():
    logits = torch.randn(5, 40)
    assert torch.equal(sample_next_tokens(logits, 0.0, 0.5), logits.argmax(-1))


def test_finished_rows_leave_the_batch_without_disturbing_the_others(tiny_model_dir):
    """Greedy decoding with stop tokens equals decoding without them cut at the first stop:
    rows that stop at different steps are pruned from the batch and the KV cache, and a
    misaligned cache would change the remaining rows' tokens."""
    loaded = load_for_eval(tiny_model_dir, "cpu")
    model, tok = loaded.model, loaded.tokenizer
    prompts = ["alpha beta", "what is the capital of", "gamma", "delta plus alpha equals"]
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    input_ids = torch.full((len(prompts), width), tok.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    with torch.no_grad():
        free, free_finished = decode(model, input_ids, attention_mask, 12, 0.0, 1.0, set())
        assert not any(free_finished) and all(len(t) == 12 for t in free)
        stops = {free[0][2], free[1][6]}  # rows end at different steps (or run to the end)
        cut, finished = decode(model, input_ids, attention_mask, 12, 0.0, 1.0, stops)
    ends = []
    for row in range(len(prompts)):
        first = next((t for t, token in enumerate(free[row]) if token in stops), None)
        expected = free[row] if first is None else free[row][: first + 1]
        assert cut[row] == expected
        assert finished[row] == (first is not None)
        ends.append(len(cut[row]))
    assert len(set(ends)) > 1
