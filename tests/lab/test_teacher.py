"""The lab's AI-feedback teacher: judgement transcripts in the corpus, as LocalJudge asks them,
and teacher_agreement against gold with fake judges."""

import re
from collections import Counter

import pytest
from transformers import LlamaForCausalLM

from alignlab.config import ConfigError, load_config
from alignlab.data.templates import render_messages
from alignlab.data.tokenize import adds_bos, tokenize_segments
from alignlab.icl.critique import CRITIQUE, PRINCIPLE, REVISION
from alignlab.judges import Judge, JudgeTemplates, LocalJudge
from alignlab.judges.templates import PAIR_VERDICTS
from alignlab.lab import LabWorld, gold_score, pretraining_corpus
from alignlab.lab.build import LabBuildConfig
from alignlab.lab.gold import REFUSAL
from alignlab.lab.teacher import (
    FEEDBACK_MIX,
    PRINCIPLES,
    agreement_pairs,
    critique_of,
    critique_transcript,
    pairwise_transcript,
    pointwise_transcript,
    rating,
    teacher_agreement,
)
from alignlab.models.tiny import tiny_llama_config, train_tokenizer

WORLD = LabWorld(seed=0)
TEMPLATES = JudgeTemplates()
TRAIN = {p.text: p for p in WORLD.prompts("train", 1200, stream="pretrain-0")}
PAIR = re.compile(
    r"\[User request\]\n(?P<prompt>.*?)\n\n\[Response A\]\n(?P<a>.*?)\n\n"
    r"\[Response B\]\n(?P<b>.*?)\n\nWhich response is better\?",
    re.S,
)
ONE = re.compile(
    r"\[User request\]\n(?P<prompt>.*?)\n\n\[Response\]\n(?P<r>.*?)\n\nReply with", re.S
)
PRINCIPLE_LINE = re.compile(r"Judge them by this principle:\n(?P<p>.*?)\n\n")


def read_pair(question: str) -> tuple[str, str, str, str | None]:
    """(prompt text, response A, response B, principle or None) of a pairwise judge question."""
    found = PAIR.search(question)
    principle = PRINCIPLE_LINE.search(question)
    return found["prompt"], found["a"], found["b"], principle["p"] if principle else None


def corpus(share: float, n: int = 1200) -> list[dict]:
    return pretraining_corpus(WORLD, mentions_per_fact=1, n_transcripts=n, feedback_share=share)


# --- the build option and the corpus -------------------------------------------------------


def test_feedback_share_zero_keeps_the_corpus_and_the_build_keys():
    plain = pretraining_corpus(WORLD, mentions_per_fact=1, n_transcripts=400)
    assert corpus(0.0, 400) == plain
    # the keys of the builds made before the option existed
    assert LabBuildConfig().key() == "6a74318bf1c432fa"
    assert LabBuildConfig(size="medium").key() == "2eeea481a0c0a62e"
    assert LabBuildConfig(feedback_share=0.3).key() != LabBuildConfig().key()
    teacher = load_config(
        LabBuildConfig, None, ["size=medium", "feedback_share=0.3", "out=runs/lab-teacher"]
    )
    assert (teacher.hidden_size, teacher.feedback_share, teacher.out) == (
        384,
        0.3,
        "runs/lab-teacher",
    )
    with pytest.raises(ConfigError, match="feedback_share"):
        load_config(LabBuildConfig, None, ["feedback_share=1.5"])


def test_feedback_share_replaces_that_share_of_chats_split_60_20_20():
    records = corpus(0.5)
    chats = [r for r in records if "messages" in r]
    feedback = [r for r in chats if "feedback" in r]
    assert len(chats) == 1200  # replaced, not added
    assert 0.45 < len(feedback) / len(chats) < 0.55
    kinds = Counter(r["feedback"] for r in feedback)
    for kind, share in FEEDBACK_MIX.items():
        assert abs(kinds[kind] / len(feedback) - share) < 0.06, kinds
    for r in feedback:  # every judged prompt is a train prompt, of the record's family
        question = r["messages"][0]["content"]
        if r["feedback"] == "critique":
            text = question
        else:
            text = (PAIR if r["feedback"] == "pairwise" else ONE).search(question)["prompt"]
        assert TRAIN[text].family == r["family"]


def test_pairwise_transcripts_are_the_judges_question_answered_by_noisy_gold():
    records = [r for r in corpus(1.0) if r.get("feedback") == "pairwise"]
    agree, first_better, principled, principled_agree = 0, 0, 0, 0
    for r in records:
        user, answer = r["messages"]
        text, a, b, principle = read_pair(user["content"])
        prompt = TRAIN[text]
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][:1] == TEMPLATES.pairwise_messages(prompt.messages, a, b, principle)
        assert answer["content"] in PAIR_VERDICTS
        ga, gb = gold_score(prompt, a), gold_score(prompt, b)
        assert ga.total != gb.total  # ties are dropped
        first_better += ga.total > gb.total
        if principle is None:
            agree += (answer["content"] == "A") == (ga.total > gb.total)
            continue
        component = next(c for c, p in PRINCIPLES.items() if p == principle)
        margin = getattr(ga, component) - getattr(gb, component)
        assert margin != 0  # judged by the component the principle names
        principled += 1
        principled_agree += (answer["content"] == "A") == (margin > 0)
    n = len(records)
    assert n > 600
    assert 0.45 < first_better / n < 0.55  # the gold-better response shown first half the time
    # a third are asked under a principle, those whose pair differs in some component
    assert 0.15 < principled / n < 0.35
    assert 0.8 < agree / (n - principled) < 0.99  # good, not perfect
    assert 0.8 < principled_agree / principled <= 1.0


def test_pairwise_transcripts_follow_the_templates_given():
    import random

    rng = random.Random(0)
    templates = JudgeTemplates(system="You are a careful judge.")
    for prompt in list(TRAIN.values())[:60]:
        messages = pairwise_transcript(prompt, rng, templates, principle_share=0.0)
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert read_pair(messages[1]["content"])[3] is None  # no principle asked


def test_pointwise_transcripts_rate_binned_gold():
    assert [rating(x) for x in (-1.0, -0.5, -0.21, 0.0, 0.25, 0.5, 0.69, 0.8, 1.0)] == [
        1, 1, 1, 2, 3, 4, 4, 5, 5,
    ]  # fmt: skip
    import random

    rng = random.Random(0)
    seen = Counter()
    for prompt in list(TRAIN.values())[:300]:
        messages = pointwise_transcript(prompt, rng)
        response = ONE.search(messages[0]["content"])["r"]
        assert messages[:1] == TEMPLATES.pointwise_messages(prompt.messages, response)
        assert messages[1]["content"] == str(rating(gold_score(prompt, response).total))
        seen[messages[1]["content"]] += 1
    assert set(seen) == {"1", "2", "3", "4", "5"}, seen


def test_critique_names_what_gold_penalises_and_the_revision_is_the_oracle():
    import random

    rng = random.Random(0)
    for prompt in list(TRAIN.values())[:400]:
        messages = critique_transcript(prompt, rng)
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        assert messages[2]["content"] == CRITIQUE.format(principle=PRINCIPLE)
        assert messages[4]["content"] == REVISION.format(principle=PRINCIPLE)
        assert messages[5]["content"] == WORLD.ideal_response(prompt)
        fine = messages[3]["content"] == "The response is fine."
        assert fine == (gold_score(prompt, messages[1]["content"]).total == 1.0)
    by_family = {}
    for prompt in TRAIN.values():
        by_family.setdefault(prompt.family, prompt)
    harmful, unknown, fact = by_family["harmful"], by_family["unknown"], by_family["fact"]
    assert "harmful request" in critique_of(harmful, f"Sure, here is how to {harmful.gold['task']}")
    assert critique_of(harmful, REFUSAL) == "The response is fine."
    assert "invents" in critique_of(unknown, f"The {unknown.gold['noun']} of it is salt.")
    wrong = next(v for v in fact.gold["distractors"])
    said = critique_of(fact, f"The {fact.gold['noun']} of {fact.gold['entity']} is {wrong}.")
    assert said.startswith("The response states a wrong") and fact.gold["entity"] in said
    padded = critique_of(
        fact, "Great question! " + WORLD.ideal_response(fact) + " Hope this helps!"
    )
    assert padded == "The response pads the answer with filler."


# --- the chat template agrees with LocalJudge -----------------------------------------------


@pytest.fixture(scope="module")
def judge_on_a_corpus_tokenizer():
    """A LocalJudge with the default templates over a tokenizer trained, as the build trains
    it, on a small corpus with feedback (an untrained model: only the encoding is tested)."""
    records = pretraining_corpus(WORLD, mentions_per_fact=1, n_transcripts=400, feedback_share=0.5)
    tokenizer = train_tokenizer(
        [
            r["text"] if "text" in r else " ".join(m["content"] for m in r["messages"])
            for r in records
        ],
        vocab_size=400,
    )
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), hidden_size=32, num_layers=1))
    return LocalJudge(model, tokenizer), [r for r in records if r.get("feedback")]


def test_training_chats_start_with_the_judges_text_then_the_one_token_verdict(
    judge_on_a_corpus_tokenizer,
):
    judge, feedback = judge_on_a_corpus_tokenizer
    tokenizer = judge.tokenizer
    checked = Counter()
    for record in feedback:
        if record["feedback"] == "critique":
            continue
        conversation, answer = record["messages"][:-1], record["messages"][-1]["content"]
        rendered = render_messages(tokenizer, record["messages"])  # as the build renders it
        judged = judge.judge_text(conversation)
        assert rendered.startswith(judged)
        verdicts = PAIR_VERDICTS if record["feedback"] == "pairwise" else TEMPLATES.scale_verdicts
        prompt_ids, verdict_ids = judge.encode(judged, verdicts)  # raises unless one token each
        trained = tokenize_segments(tokenizer, [(rendered, False)], add_bos=adds_bos(tokenizer))[0]
        # the base learns, at the judge's answer position, exactly the token the judge reads
        assert trained[: len(prompt_ids)] == prompt_ids
        assert trained[len(prompt_ids)] == verdict_ids[verdicts.index(answer)]
        checked[record["feedback"]] += 1
    assert checked["pairwise"] > 50 and checked["pointwise"] > 10


# --- agreement with gold --------------------------------------------------------------------


class GoldJudge(Judge):
    """Reads gold from the judge's question: a perfect judge."""

    def __init__(self, world):
        super().__init__()
        self.prompts = {p.text: p for p, _, _ in agreement_pairs(world, 6)}

    def verdict_probs(self, conversations, verdicts):
        out = []
        for conversation in conversations:
            question = conversation[-1]["content"]
            if tuple(verdicts) == PAIR_VERDICTS:
                text, a, b, principle = read_pair(question)
                prompt = self.prompts[text]
                ga, gb = gold_score(prompt, a), gold_score(prompt, b)
                component = next((c for c, p in PRINCIPLES.items() if p == principle), "total")
                margin = getattr(ga, component) - getattr(gb, component)
                out.append([1.0, 0.0] if margin > 0 else [0.0, 1.0] if margin < 0 else [0.5, 0.5])
            else:
                found = ONE.search(question)
                given = rating(gold_score(self.prompts[found["prompt"]], found["r"]).total)
                out.append([float(v == str(given)) for v in verdicts])
        return out


class FirstShownJudge(Judge):
    """Always answers "A" and rates everything 3: position bias and nothing else."""

    def verdict_probs(self, conversations, verdicts):
        return [[1.0 if v in ("A", "3") else 0.0 for v in verdicts] for _ in conversations]


def test_a_judge_that_reads_gold_agrees_everywhere():
    result = teacher_agreement(GoldJudge(WORLD), WORLD, n_per_family=6)
    assert result["pairs"] == 6 * len(result["by_family"]) == 36
    assert result["agreement"] == 1.0 and result["consistency"] == 1.0
    assert result["position_bias"] == 0.0
    assert result["spearman"] > 0.9 and result["pearson"] > 0.9
    for family, row in result["by_family"].items():
        assert row["pairs"] == 6 and row["agreement"] == 1.0, family
    for component, row in result["by_principle"].items():
        assert row["principle"] == PRINCIPLES[component]
        assert row["agreement"] == 1.0 and row["pairs"] > 0, component
    assert result["by_principle"]["harmless"]["pairs"] <= result["by_family"]["harmful"]["pairs"]


def test_a_judge_that_prefers_position_a_is_at_chance_with_bias_one_half():
    result = teacher_agreement(FirstShownJudge(), WORLD, n_per_family=6, principles=False)
    assert result["agreement"] == 0.5  # P = 0.5 after the swap: half a hit per pair
    assert result["position_bias"] == 0.5 and result["consistency"] == 0.0
    assert result["spearman"] != result["spearman"]  # constant scores: nan
    assert result["by_principle"] == {}
    assert all(row["position_bias"] == 0.5 for row in result["by_family"].values())


def test_agreement_pairs_are_heldout_distinct_in_gold_and_deterministic():
    pairs = agreement_pairs(WORLD, 5, seed=3)
    assert pairs == agreement_pairs(WORLD, 5, seed=3) != agreement_pairs(WORLD, 5, seed=4)
    assert Counter(p.family for p, _, _ in pairs) == dict.fromkeys(WORLD.family_weights, 5)
    for prompt, a, b in pairs:
        assert prompt.split == "heldout"
        assert gold_score(prompt, a).total != gold_score(prompt, b).total
