"""generate(): batching with left padding, seeds, stop tokens, order, clean sampling config."""

import pytest
import torch

from alignlab.data.templates import render_prompt
from alignlab.eval.harness import load_for_eval
from alignlab.models.generation import generate, stop_token_ids

PROMPTS = [
    "What is 1 plus 2?",
    [{"role": "user", "content": "What is 3 plus 4?"}],
    "alpha",
    [
        {"role": "system", "content": "answer"},
        {"role": "user", "content": "the capital of delta"},
    ],
    "beta gamma delta what is the capital of",
    "sorry",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_for_eval(tiny_model_dir, "cpu")


def test_batched_greedy_equals_one_by_one_and_plain_hf(tiny):
    model, tok = tiny.model, tiny.tokenizer
    batched = generate(model, tok, PROMPTS, max_new_tokens=10, temperature=0, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=10, temperature=0)[0] for p in PROMPTS]
    stops = stop_token_ids(model, tok)
    for prompt, b, s in zip(PROMPTS, batched, single):
        assert b.response_ids == s.response_ids and b.text == s.text
        assert b.prompt_text == render_prompt(tok, prompt)  # input order kept
        ids = torch.tensor([b.prompt_ids])
        plain = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=10,
            eos_token_id=stops,
            pad_token_id=tok.pad_token_id,
        )[0, ids.shape[1] :].tolist()
        assert plain[: len(b.response_ids)] == b.response_ids
    # prompts of different lengths really were padded together
    assert len({len(g.prompt_ids) for g in batched[:4]}) > 1


def test_sampling_is_deterministic_given_the_seed(tiny):
    model, tok = tiny.model, tiny.tokenizer
    prompts = PROMPTS * 2
    first = generate(model, tok, prompts, max_new_tokens=8, batch_size=5, seed=7)
    again = generate(model, tok, prompts, max_new_tokens=8, batch_size=5, seed=7)
    other = generate(model, tok, prompts, max_new_tokens=8, batch_size=5, seed=8)
    assert [g.response_ids for g in first] == [g.response_ids for g in again]
    assert [g.response_ids for g in first] != [g.response_ids for g in other]
    # the same prompt twice in one run gives two different samples
    assert first[0].response_ids != first[len(PROMPTS)].response_ids
    assert [g.prompt_text for g in first] == [render_prompt(tok, p) for p in prompts]


def test_per_prompt_seeds_make_responses_independent_of_batching(tiny):
    """With `seeds`, a prompt's response depends on its seed, not on batch_size, the order of
    the prompts or which other prompts share its batch; the global RNG is left alone."""
    model, tok = tiny.model, tiny.tokenizer
    seeds = [11, 12, 13, 14, 15, 16]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    batched = generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=4, seeds=seeds)
    assert torch.equal(torch.get_rng_state(), state)
    order = [5, 2, 0, 3, 1, 4]
    shuffled = generate(
        model, tok, [PROMPTS[i] for i in order], max_new_tokens=8, batch_size=1,
        seeds=[seeds[i] for i in order],
    )  # fmt: skip
    for position, i in enumerate(order):
        assert shuffled[position].response_ids == batched[i].response_ids
    reseeded = generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=4, seeds=seeds[::-1])
    assert [g.response_ids for g in reseeded] != [g.response_ids for g in batched]
    with pytest.raises(ValueError, match="seeds"):
        generate(model, tok, PROMPTS, max_new_tokens=2, seeds=seeds[:2])


def test_stop_tokens_eos_and_end_of_turn(small_model_dirs):
    loaded = load_for_eval(small_model_dirs[0], "cpu")
    model, tok = loaded.model, loaded.tokenizer
    model.generation_config.eos_token_id = tok.eos_token_id  # <|im_end|> comes from the vocab
    assert set(stop_token_ids(model, tok)) == {0, 1}
    gens = generate(model, tok, ["a b"] * 300, max_new_tokens=4, batch_size=64, seed=0)
    ends = {"eos": 0, "im_end": 0, "length": 0}
    for g in gens:
        body = g.response_ids[:-1] if g.finished else g.response_ids
        assert not set(body) & {0, 1}  # cut at the first stop token
        if g.finished:
            assert g.response_ids[-1] in (0, 1)
            ends["eos" if g.response_ids[-1] == 0 else "im_end"] += 1
        else:
            assert len(g.response_ids) == 4
            ends["length"] += 1
        assert g.text == tok.decode(body)
        assert "<|im_end|>" not in g.text and "<|endoftext|>" not in g.text
    assert all(count > 0 for count in ends.values()), ends


def test_model_generation_defaults_do_not_leak_into_sampling(small_model_dirs):
    loaded = load_for_eval(small_model_dirs[0], "cpu")
    model, tok = loaded.model, loaded.tokenizer
    model.generation_config.top_k = 1  # a hub config like this would make sampling greedy
    model.generation_config.repetition_penalty = 5.0
    gens = generate(model, tok, ["a b"] * 50, max_new_tokens=3, seed=0)
    assert len({tuple(g.response_ids) for g in gens}) > 5
    assert model.generation_config.top_k == 1  # restored


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="empty"):
        generate(tiny.model, tiny.tokenizer, [""], max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny.model, tiny.tokenizer, ["a"], top_p=0)
