"""Rollouts: batch layout and group ids, generation-time vs training-time log-probs, stop
strings, seeds."""

import dataclasses

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.data.collate import collate
from alignlab.models.generation import Generation, prompt_token_ids
from alignlab.models.lm import TokenLogProbs
from alignlab.models.logprobs import response_rows, sequence_logps
from alignlab.ops import IGNORE_INDEX
from alignlab.rl.rollout import apply_stop_strings, rollout

PROMPTS = ["a b", "c", "b c a"]


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(
        model_dir
    )


def test_layout_group_ids_and_old_logps(word_model_dir):
    model, tokenizer = load(word_model_dir)
    roll = rollout(model, tokenizer, PROMPTS, samples_per_prompt=2, max_new_tokens=6, seed=3)
    assert len(roll) == 6
    assert roll.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert roll.prompts == [p for p in PROMPTS for _ in range(2)]
    for n, generation in enumerate(roll.generations):
        prompt = prompt_token_ids(tokenizer, PROMPTS[n // 2])
        length = len(prompt) + len(generation.response_ids)
        assert roll.input_ids[n, :length].tolist() == prompt + generation.response_ids
        labels = roll.labels[n].tolist()
        assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert labels[len(prompt) : length] == generation.response_ids
        assert set(labels[length:]) <= {IGNORE_INDEX}
        assert roll.finished[n] == generation.finished
        assert generation.finished == (generation.response_ids[-1] in (0, 1))
        assert roll.texts[n] == generation.text
    assert torch.all(roll.old_logps[~roll.mask] == 0)
    assert torch.all(roll.old_logps[roll.mask] < 0)
    # the same numbers as the eval module's teacher-forced sequence log-probs
    sums = (roll.old_logps * roll.mask).sum(1)
    torch.testing.assert_close(
        sums, sequence_logps(model, tokenizer, roll.generations), atol=1e-5, rtol=0
    )
    # a pure function of the seed
    again = rollout(model, tokenizer, PROMPTS, samples_per_prompt=2, max_new_tokens=6, seed=3)
    assert again.texts == roll.texts
    other = rollout(model, tokenizer, PROMPTS, samples_per_prompt=2, max_new_tokens=6, seed=4)
    assert other.texts != roll.texts


def test_generation_scores_match_training_logps(word_model_dir):
    """log softmax of generate's scores at temperature 1, top_p 1 equals the teacher-forced
    TokenLogProbs pass the losses train through (left vs right padding, cache vs none)."""
    model, tokenizer = load(word_model_dir)
    encoded = [prompt_token_ids(tokenizer, p) for p in PROMPTS]
    width = max(map(len, encoded))
    input_ids = torch.full((3, width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((3, width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=1.0,
            top_p=1.0, top_k=0, max_new_tokens=6, min_new_tokens=6, output_scores=True,
            return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=None,
        )  # fmt: skip
    new = out.sequences[:, width:]
    scores = torch.stack(out.scores, 1).log_softmax(-1)  # (B, 6, V)
    gen_logps = scores.gather(-1, new.unsqueeze(-1)).squeeze(-1)
    generations = [
        Generation("", encoded[i], new[i].tolist(), "", finished=False) for i in range(3)
    ]
    batch = collate(response_rows(generations), tokenizer.pad_token_id)
    with torch.no_grad():
        train_logps = TokenLogProbs(model).eval()(batch)
    mask = TokenLogProbs.mask(batch)
    for i in range(3):
        torch.testing.assert_close(train_logps[i][mask[i]], gen_logps[i], atol=1e-4, rtol=0)


def test_stop_strings_cut_text_and_tokens(word_model_dir):
    model, tokenizer = load(word_model_dir)
    ids = tokenizer("a b c a", add_special_tokens=False)["input_ids"]
    generation = Generation("x", [4], ids, "a b c a", finished=False)
    cut = apply_stop_strings(generation, tokenizer, ["c", "zzz"])
    assert cut.text == "a b " and cut.finished
    assert cut.response_ids == ids[:3]  # through the token that completes the stop string
    assert apply_stop_strings(generation, tokenizer, ["zzz"]) == generation
    # through rollout: no text keeps a stop string, and the tokens were cut consistently
    roll = rollout(model, tokenizer, PROMPTS, 4, max_new_tokens=8, seed=1, stop_strings=["b"])
    assert all("b" not in text for text in roll.texts)
    for generation in roll.generations:
        if generation.response_ids[-1] == 5:  # ended on the stop string's token
            assert generation.finished
    assert int(roll.mask.sum()) == sum(len(g.response_ids) for g in roll.generations)


def test_multi_token_stop_string_with_bpe(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "alpha beta gamma"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    generation = Generation("", [1], ids, text, finished=False)
    cut = apply_stop_strings(generation, tokenizer, ["ta ga"])
    assert cut.text == "alpha be"
    decoded = tokenizer.decode(cut.response_ids)
    assert "ta ga" in decoded and "ta ga" not in tokenizer.decode(cut.response_ids[:-1])
    assert (
        dataclasses.replace(cut, text=generation.text, response_ids=ids, finished=False)
        == generation
    )


def test_sampler_logps_match_the_trainers_and_follow_stop_strings(word_model_dir):
    """The log-probs the sampler saw (KV-cached decode) equal the teacher-forced old log-probs
    to float32 rounding of a few-nat quantity, token by token, and are cut with the tokens."""
    model, tokenizer = load(word_model_dir)
    roll = rollout(
        model, tokenizer, PROMPTS, 4, max_new_tokens=8, seed=1, stop_strings=["b"],
        sampler_logps=True,
    )  # fmt: skip
    assert roll.sampler_logps.shape == roll.old_logps.shape
    assert torch.all(roll.sampler_logps[~roll.mask] == 0)
    scale = roll.old_logps.abs().max().item()
    tolerance = 64 * torch.finfo(torch.float32).eps * max(scale, 1.0)
    torch.testing.assert_close(roll.sampler_logps, roll.old_logps, atol=tolerance, rtol=0)
    for generation in roll.generations:
        assert len(generation.sampler_logps) == len(generation.response_ids)
    assert rollout(model, tokenizer, PROMPTS, 1, max_new_tokens=4, seed=1).sampler_logps is None
