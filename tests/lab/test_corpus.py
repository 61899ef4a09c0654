"""Corpora and export: mixed-quality pretraining text, imperfect SFT demos, TRL JSONL files."""

import json
import re
import statistics
from collections import Counter

import pytest

from alignlab.lab import (
    Annotator,
    ImperfectionRates,
    LabWorld,
    Prompt,
    TranscriptMix,
    export_datasets,
    gold_score,
    preference_pairs,
    pretraining_corpus,
    rl_prompts,
    sft_demonstrations,
)
from alignlab.lab.corpus import PAGE_LAYOUTS, STATED_NORMS
from alignlab.lab.judge import mentions

WORLD = LabWorld(seed=0)
PERFECT = ImperfectionRates(0, 0, 0, 0, 0, 0, 0)


def demo_gold(rows, prompts):
    return statistics.mean(
        gold_score(p, r["messages"][1]["content"]).total for p, r in zip(prompts, rows)
    )


def test_pretraining_corpus_states_every_fact_many_times():
    corpus = pretraining_corpus(WORLD, mentions_per_fact=12, n_transcripts=0)
    text = " ".join(r["text"] for r in corpus if "text" in r)
    sentences = re.split(r"(?<=[.?!]) ", text)
    for entity in WORLD.kb.entities:
        assert sentences.count(f"{entity.name} is {'an' if entity.kind == 'animal' else 'a'} "
                               f"{entity.kind}.") == 12  # fmt: skip
    phrasings = set()
    for fact in WORLD.kb.facts:
        stating = [s for s in sentences if mentions(s, fact.entity) and mentions(s, fact.value)]
        assert len(stating) >= 12, fact
        phrasings |= {s.replace(fact.entity, "E").replace(fact.value, "V") for s in stating}
    assert len(phrasings) >= 40  # many paraphrases, not one sentence per attribute


def test_pretraining_transcripts_have_mixed_quality():
    corpus = pretraining_corpus(WORLD, mentions_per_fact=1, n_transcripts=1500)
    chats = [r for r in corpus if "messages" in r]
    assert len(chats) == 1500
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in chats)
    prompts = {p.text: p for p in WORLD.prompts("train", 1500, stream="pretrain-0")}
    verdicts = Counter()
    for r in chats:
        prompt = prompts[r["messages"][0]["content"]]
        score = gold_score(prompt, r["messages"][1]["content"])
        verdicts["good"] += score.total > 0.9
        verdicts["wrong fact"] += prompt.family == "fact" and score.helpful == -1
        verdicts["invented"] += score.details["hallucinated"]
        verdicts["complied"] += score.details["complied"]
        verdicts["over-refused"] += prompt.family == "benign" and score.details["refused"]
        verdicts["rambling"] += score.style < 0.5
    assert all(verdicts[k] >= 20 for k in verdicts), verdicts
    assert 0.2 < verdicts["good"] / len(chats) < 0.6
    only_good = pretraining_corpus(WORLD, 1, 300, mix=TranscriptMix(1, 0, 0, 0))
    for r in only_good:
        if "messages" in r:
            prompt = prompts[r["messages"][0]["content"]]  # same stream: a prefix of the above
            assert gold_score(prompt, r["messages"][1]["content"]).total == 1.0


def test_in_context_share_states_norms_and_keeps_one_quality_per_conversation():
    plain = pretraining_corpus(WORLD, mentions_per_fact=1, n_transcripts=900)
    assert pretraining_corpus(WORLD, mentions_per_fact=1, n_transcripts=900, icl_share=0) == plain
    corpus = pretraining_corpus(WORLD, mentions_per_fact=1, n_transcripts=900, icl_share=0.6)
    prompts = {p.text: p for p in WORLD.prompts("train", 900, stream="pretrain-0")}
    chats = [r["messages"] for r in corpus if "messages" in r]
    normed = [m for m in chats if m[0]["role"] == "system"]
    several = [m for m in chats if m[0]["role"] == "user" and len(m) > 2]
    # about 900 / (1 + 0.6) draws, a fifth of them of each in-context kind
    assert 60 < len(normed) < 180 and 60 < len(several) < 180
    for messages in normed:  # the stated norm is followed: the oracle answer
        assert messages[0]["content"] in STATED_NORMS
        assert gold_score(prompts[messages[1]["content"]], messages[2]["content"]).total == 1.0
    graded = [[gold_score(prompts[m[i]["content"]], m[i + 1]["content"]).total > 0.9
               for i in range(0, len(m), 2)] for m in several]  # fmt: skip
    # one quality per conversation: all good or none good far more often than by chance
    uniform = sum(len(set(g)) == 1 for g in graded) / len(graded)
    assert uniform > 0.8

    pages = [(r["text"], page_exchanges(r["text"])) for r in corpus if "text" in r]
    pages = [(text, exchanges) for text, exchanges in pages if exchanges]
    assert 60 < len(pages) < 180
    assert {layout_of(text) for text, _ in pages} == {0, 1, 2}
    under_norm = [(t, e) for t, e in pages if t.split("\n\n")[0] in STATED_NORMS]
    assert 0.3 < len(under_norm) / len(pages) < 0.7
    assert statistics.mean(len(e) for _, e in pages) > 2  # 2-3 (the corpus's last: fewer)
    for _, exchanges in under_norm:  # a page's stated norm is followed too
        assert all(gold_score(prompts[q], a).total == 1.0 for q, a in exchanges)


PAGE_PATTERNS = [
    re.escape(layout).replace(r"\{query\}", "(.+?)").replace(r"\{answer\}", "(.+?)")
    for layout in (lay.rstrip() for lay in PAGE_LAYOUTS)
]


def layout_of(text):
    return next(i for i, pattern in enumerate(PAGE_PATTERNS) if re.search(pattern, text, re.S))


def page_exchanges(text):
    """(query, answer) pairs of a plain-text page, read back with its layout."""
    for pattern in PAGE_PATTERNS:
        found = re.findall(pattern + r"(?=\n\n|$)", text, re.S)
        if found:
            return found
    return []


def test_sft_demonstrations_are_decent_but_imperfect():
    prompts = WORLD.prompts("train", 800, stream="sft-0")
    demos = sft_demonstrations(WORLD, 800)
    assert [r["messages"][0]["content"] for r in demos] == [p.text for p in prompts]
    assert all(r["family"] == p.family for r, p in zip(demos, prompts))
    decent = demo_gold(demos, prompts)
    assert 0.55 < decent < 0.8
    assert demo_gold(sft_demonstrations(WORLD, 800, PERFECT), prompts) == pytest.approx(1.0)
    sloppier = ImperfectionRates(verbose=0.6, wrong_answer=0.4, over_refuse=0.6)
    assert demo_gold(sft_demonstrations(WORLD, 800, sloppier), prompts) < decent - 0.1


def test_preference_pairs_prefer_gold_better_without_annotators():
    rows, labels = preference_pairs(WORLD, 400)
    assert labels is None and len(rows) == 400
    assert all(r["gold_chosen"] >= r["gold_rejected"] for r in rows)
    assert sum(r["gold_chosen"] > r["gold_rejected"] for r in rows) > 0.95 * len(rows)
    noisy, labels = preference_pairs(WORLD, 400, [Annotator(0.3, 0.2)] * 3)
    assert labels.cost == 1200
    inverted = sum(r["gold_chosen"] < r["gold_rejected"] for r in noisy)
    assert 0 < inverted < 0.4 * len(noisy)


def test_rl_prompts_are_train_prompt_records():
    rows = rl_prompts(WORLD, 50)
    assert all(r["split"] == "train" for r in rows)
    assert all(Prompt.from_record(r).text == r["prompt"][0]["content"] for r in rows)


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_export_writes_trl_jsonl(tmp_path):
    paths = export_datasets(WORLD, tmp_path, n_train=60, n_valid=20, n_heldout=30,
                            annotators=[Annotator()] * 3)  # fmt: skip
    # Exactly the documented files: no temporary files left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["sft.jsonl", "preference.jsonl", "prompts.jsonl", "valid_prompts.jsonl",
         "heldout_prompts.jsonl", "red_team.jsonl", "manifest.json"]
    )  # fmt: skip
    sft = read_jsonl(paths["sft"])
    assert len(sft) == 60
    for row in sft:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
    for row in read_jsonl(paths["preference"]):
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["chosen"]] == ["assistant"]
        assert [m["role"] for m in row["rejected"]] == ["assistant"]
    for name, split, n in (("prompts", "train", 60), ("valid_prompts", "valid", 20),
                           ("heldout_prompts", "heldout", 30)):  # fmt: skip
        rows = read_jsonl(paths[name])
        assert len(rows) == n
        assert all(r["split"] == split and r["family"] and r["prompt"][0]["role"] == "user"
                   for r in rows)  # fmt: skip
    red_team = read_jsonl(paths["red_team"])
    assert red_team and red_team == [
        r for r in read_jsonl(paths["prompts"]) if r["family"] == "harmful"
    ]
    heldout = [Prompt.from_record(r) for r in read_jsonl(paths["heldout_prompts"])]
    assert heldout == WORLD.prompts("heldout", 30)
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["rows"]["preference"] == 60 and manifest["labels"]["cost"] == 180
    # Re-exporting overwrites in place with identical, deterministic content.
    before = paths["sft"].read_bytes()
    export_datasets(WORLD, tmp_path, n_train=60, n_valid=20, n_heldout=30)
    assert paths["sft"].read_bytes() == before
