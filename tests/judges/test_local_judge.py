"""The local judge: verdicts from the verdict tokens' logits, checked against a naive
one-at-a-time computation, padding, the forward count, verdict tokens, and loading."""

import copy
import math

import pytest
import torch
from judging import FavoursLM

from alignlab.judges import JudgeError, JudgeTemplates, LocalJudge, load_local_judge

PROMPTS = [
    "What is 1 plus 2?",
    [{"role": "user", "content": "What is 3 plus 4?"}],
    "alpha",
    "What is the capital of beta? Answer in one word, please, and do not explain it at length.",
    [
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 2 plus 3?"},
    ],
    "gamma delta",
]
GOOD = ["1 plus 2 equals 3.", "7", "beta", "Gamma.", "5", "sorry"]
BAD = ["sorry cannot help", "3 plus 4 equals 8, I think, or maybe 9.", "alpha", "x", "6", "delta"]

# float32 logits from padded and unpadded forwards agree to a few ulps of their size; a
# probability moves by at most 1/4 of a logit difference
TOLERANCE = 64 * torch.finfo(torch.float32).eps


def naive_verdict_probs(model, tokenizer, messages, verdicts, suffix="", chat=True):
    """P(verdict) of one judge conversation from its own unpadded forward."""
    if chat:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages)
    text += suffix
    given = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = []
    for verdict in verdicts:
        with_verdict = tokenizer(text + verdict, add_special_tokens=False)["input_ids"]
        if with_verdict[:-1] != given:  # the verdict merged with the end of the prompt
            given = with_verdict[:-1]
        ids.append(with_verdict[-1])
    with torch.no_grad():
        logits = model(torch.tensor([given])).logits[0, -1]
    return torch.softmax(logits[ids].double(), -1).tolist()


def naive_compare(model, tokenizer, templates, prompt, a, b, **kwargs):
    first = naive_verdict_probs(
        model, tokenizer, templates.pairwise_messages(prompt, a, b), "AB", **kwargs
    )[0]
    swapped = naive_verdict_probs(
        model, tokenizer, templates.pairwise_messages(prompt, b, a), "AB", **kwargs
    )[0]
    return (first + 1 - swapped) / 2, first, swapped


def test_a_position_only_lm_gets_one_half_and_its_bias(tiny_tokenizer):
    # "A" (and " A") get logit log 3, every other token 0: P_A = 3 / (3 + 1) in any order,
    # up to log 3 rounded to float32 (the fake's logits)
    ulp = torch.finfo(torch.float32).eps
    judge = LocalJudge(FavoursLM(tiny_tokenizer, "A", math.log(3)), tiny_tokenizer)
    p = judge.compare(PROMPTS, GOOD, BAD)
    assert p == pytest.approx([0.5] * len(PROMPTS), abs=1e-12)
    assert judge.last_stats.position_bias == pytest.approx(0.75 - 0.5, abs=ulp)
    favours_b = LocalJudge(FavoursLM(tiny_tokenizer, "B", math.log(4)), tiny_tokenizer)
    favours_b.compare(PROMPTS, GOOD, BAD)
    assert favours_b.last_stats.position_bias == pytest.approx(1 / 5 - 0.5, abs=ulp)


def test_batched_verdicts_equal_a_naive_unpadded_forward_each(judge_lm):
    model, tokenizer = judge_lm
    judge = LocalJudge(model, tokenizer, batch_size=8)
    p = judge.compare(PROMPTS, GOOD, BAD)
    naive = [
        naive_compare(model, tokenizer, judge.templates, q, a, b)
        for q, a, b in zip(PROMPTS, GOOD, BAD)
    ]
    assert p == pytest.approx([n[0] for n in naive], abs=TOLERANCE)
    assert judge.last_stats.first_preferred == pytest.approx([n[1] for n in naive], abs=TOLERANCE)
    assert judge.last_stats.first_preferred_swapped == pytest.approx(
        [n[2] for n in naive], abs=TOLERANCE
    )
    # the verdicts differ from item to item, so agreeing with the naive ones means something
    assert max(n[1] for n in naive) - min(n[1] for n in naive) > 0.1
    # padding (batches of 1 have none) does not change a verdict
    alone = LocalJudge(model, tokenizer, batch_size=1).compare(PROMPTS, GOOD, BAD)
    assert alone == pytest.approx(p, abs=TOLERANCE)


def test_swapping_a_and_b_gives_one_minus_p(judge_lm):
    judge = LocalJudge(*judge_lm, batch_size=5)
    p = judge.compare(PROMPTS, GOOD, BAD)
    swapped = judge.compare(PROMPTS, BAD, GOOD)
    assert swapped == pytest.approx([1 - x for x in p], abs=TOLERANCE)


def test_one_forward_per_batch_whatever_the_batch(judge_lm):
    model, tokenizer = judge_lm
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        judge = LocalJudge(model, tokenizer, batch_size=12)
        judge.compare(PROMPTS, GOOD, BAD)  # 12 conversations: both orders of 6 pairs
        assert len(calls) == 1 and judge.forward_passes == 1
        judge.score(PROMPTS, GOOD)
        assert len(calls) == 2
        LocalJudge(model, tokenizer, batch_size=5).compare(PROMPTS, GOOD, BAD)
        assert len(calls) == 2 + 3  # ceil(12 / 5)
    finally:
        handle.remove()


def test_score_is_the_expected_rating_of_a_naive_forward(judge_lm):
    model, tokenizer = judge_lm
    judge = LocalJudge(model, tokenizer, batch_size=4)
    scores = judge.score(PROMPTS, GOOD, principle="Be honest.")
    for prompt, response, score in zip(PROMPTS, GOOD, scores):
        messages = judge.templates.pointwise_messages(prompt, response, "Be honest.")
        probs = naive_verdict_probs(model, tokenizer, messages, "12345")
        assert score == pytest.approx(
            sum((r + 1) * p for r, p in enumerate(probs)), abs=4 * TOLERANCE
        )
        assert 1 <= score <= 5


def test_without_a_chat_template_the_prompt_is_plain_text(judge_lm):
    model, tokenizer = judge_lm
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    judge = LocalJudge(model, plain)
    messages = judge.templates.pairwise_messages("q", "a", "b")
    text = judge.judge_text(messages)
    assert text == messages[-1]["content"] + "\n\nAnswer: " and "<|im_start|>" not in text
    # " A" is one pre-token: the verdict takes the prefix's space with it where it can
    ids, verdict_ids = judge.encode(text, ["A", "B"])
    assert [plain.decode([i]).strip() for i in verdict_ids] == ["A", "B"]
    assert plain.decode(ids + [verdict_ids[0]]) == text + "A"
    p = judge.compare(PROMPTS, GOOD, BAD)
    naive = [
        naive_compare(model, plain, judge.templates, q, a, b, chat=False, suffix="\n\nAnswer: ")[0]
        for q, a, b in zip(PROMPTS, GOOD, BAD)
    ]
    assert p == pytest.approx(naive, abs=TOLERANCE)


def test_a_verdict_that_is_not_one_token_is_an_error_naming_it(judge_lm):
    model, tokenizer = judge_lm
    judge = LocalJudge(model, tokenizer, templates=JudgeTemplates(scale="1-10"))
    with pytest.raises(JudgeError, match=r"verdict '10' is not one token .* \['1', '0'\]"):
        judge.score(["q"], ["r"])


def test_answer_prefix_follows_the_generation_prompt(judge_lm):
    model, tokenizer = judge_lm
    judge = LocalJudge(model, tokenizer, templates=JudgeTemplates(answer_prefix="Verdict: "))
    text = judge.judge_text(judge.templates.pairwise_messages("q", "a", "b"))
    assert text.endswith("<|im_start|>assistant\nVerdict: ")
    naive = naive_compare(model, tokenizer, judge.templates, "q", "a", "b", suffix="Verdict: ")[0]
    assert judge.compare(["q"], ["a"], ["b"]) == pytest.approx([naive], abs=TOLERANCE)


def test_load_local_judge_from_a_folder(judge_model_dir, judge_lm):
    judge = load_local_judge(str(judge_model_dir), device="cpu", batch_size=3)
    expected = LocalJudge(*judge_lm).compare(PROMPTS, GOOD, BAD)
    assert judge.compare(PROMPTS, GOOD, BAD) == pytest.approx(expected, abs=TOLERANCE)
    assert judge.forward_passes == 4
