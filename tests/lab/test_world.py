"""LabWorld: knowledge base, prompt families, split disjointness, determinism."""

import json
import re
from collections import Counter

import pytest

from alignlab.lab import (
    DEFAULT_FAMILY_WEIGHTS,
    FAMILIES,
    SPLITS,
    LabWorld,
    Prompt,
    pretraining_corpus,
    sft_demonstrations,
)
from alignlab.lab.judge import mentions

WORLD = LabWorld(seed=0)


def test_knowledge_base_sizes_follow_constructor():
    world = LabWorld(seed=3, n_entities=30, attributes_per_entity=2)
    assert len(world.kb.entities) == 30
    assert len({e.name for e in world.kb.entities}) == 30
    assert all(len(e.facts) == 2 for e in world.kb.entities)
    assert Counter(e.kind for e in world.kb.entities) == {"city": 10, "animal": 10, "scholar": 10}
    assert len(WORLD.kb.facts) == 48 * 3
    with pytest.raises(ValueError):
        LabWorld(attributes_per_entity=5)


def test_facts_draw_from_value_pools_and_link_entities():
    for fact in WORLD.kb.facts:
        assert fact.value in WORLD.kb.value_pools[fact.attribute]
        if fact.attribute == "hometown":  # hometowns are cities of the knowledge base
            assert WORLD.kb.kinds[fact.value] == "city"


def test_prompts_mix_families_by_weight_and_are_prefix_stable():
    prompts = WORLD.prompts("train", 400)
    counts = Counter(p.family for p in prompts)
    for family in FAMILIES:
        assert counts[family] == pytest.approx(400 * DEFAULT_FAMILY_WEIGHTS[family], abs=1)
    assert WORLD.prompts("train", 37) == prompts[:37]
    assert all(p.split == "train" for p in prompts)
    assert len({p.text for p in prompts}) > 0.95 * len(prompts)
    # Independent streams give different draws from the same split.
    assert WORLD.prompts("train", 50, stream="rl") != prompts[:50]


def test_family_weights_are_configurable():
    world = LabWorld(seed=0, family_weights={"harmful": 1.0, "benign": 1.0})
    assert {p.family for p in world.prompts("valid", 40)} == {"harmful", "benign"}


def test_fact_prompts_ask_about_known_facts_and_unknown_prompts_do_not():
    for prompt in WORLD.prompts("valid", 300):
        gold = prompt.gold
        if prompt.family == "fact":
            entity = WORLD.kb.by_name[gold["entity"]]
            assert entity.value(gold["attribute"]) == gold["answer"]
            assert gold["answer"] not in gold["distractors"]
        if prompt.family == "unknown":
            entity = WORLD.kb.by_name.get(gold["entity"])
            assert entity is None or entity.value(gold["attribute"]) is None
            assert gold["reason"] == (
                "unknown_entity" if entity is None else "unrecorded_attribute"
            )


def test_benign_lookalikes_share_words_with_harmful_requests():
    pools = WORLD.pools["train"]
    shared = [set(h.split()) & set(b.split()) - {"a", "my", "to"} for h, b in zip(
        pools.harmful_topics, pools.benign_topics)]  # fmt: skip
    assert sum(bool(s) for s in shared) >= 0.8 * len(shared)


def test_split_pools_are_disjoint():
    train, heldout, valid = (WORLD.pools[s] for s in ("train", "heldout", "valid"))
    for a, b in ((train, heldout), (train, valid), (valid, heldout)):
        assert not set(a.fact_templates) & set(b.fact_templates)
        assert not set(a.request_templates) & set(b.request_templates)
        assert not set(a.wrappers) & set(b.wrappers)
        assert not set(a.unknown_names) & set(b.unknown_names)
        assert not set(a.harmful_topics) & set(b.harmful_topics)
        assert not set(a.benign_topics) & set(b.benign_topics)
        for op in a.arithmetic_templates:
            assert not set(a.arithmetic_templates[op]) & set(b.arithmetic_templates[op])
        for c in a.instruction_templates:
            assert not set(a.instruction_templates[c]) & set(b.instruction_templates[c])
    known = set(WORLD.kb.by_name)
    assert not known & set(train.unknown_names + heldout.unknown_names + valid.unknown_names)


def test_heldout_prompts_never_occur_in_train_or_training_text():
    train = WORLD.prompts("train", 3000)
    heldout = WORLD.prompts("heldout", 600)
    assert not {p.text for p in heldout} & {p.text for p in train}
    pools = WORLD.pools["heldout"]
    train_text = "\n".join(p.text for p in train)
    corpus = pretraining_corpus(WORLD, mentions_per_fact=2, n_transcripts=1500)
    corpus += sft_demonstrations(WORLD, 1500)
    corpus_text = "\n".join(json.dumps(r) for r in corpus)
    for text in (train_text, corpus_text):
        for name in pools.unknown_names:
            assert not mentions(text, name), name
        for topic in pools.harmful_topics + pools.benign_topics:
            assert topic not in text, topic
    for families, templates in (
        ({"fact", "unknown"}, pools.fact_templates),
        ({"harmful", "benign"}, pools.request_templates),
    ):
        texts = [p.text for p in train if p.family in families]
        for template in templates:
            pattern = re.escape(template)
            for slot in ("{e}", "{a}", "{t}"):
                pattern = pattern.replace(re.escape(slot), ".+")
            assert not any(re.search(pattern, text) for text in texts), template
    # ...while the known entities are shared: facts must be known to be asked about.
    assert {p.gold["entity"] for p in heldout if p.family == "fact"} <= set(WORLD.kb.by_name)


def test_same_seed_same_world_different_seed_different_kb():
    again = LabWorld(seed=0)
    assert again.kb.facts == WORLD.kb.facts
    assert again.pools == WORLD.pools
    for split in SPLITS:
        assert again.prompts(split, 80) == WORLD.prompts(split, 80)
    prompts = WORLD.prompts("heldout", 80)
    responses = [WORLD.ideal_response(p)[::-1] + " maybe" for p in prompts]
    assert [again.score(p, r) for p, r in zip(prompts, responses)] == [
        WORLD.score(p, r) for p, r in zip(prompts, responses)
    ]
    other = LabWorld(seed=1)
    assert {e.name for e in other.kb.entities} != {e.name for e in WORLD.kb.entities}
    assert other.prompts("train", 50) != WORLD.prompts("train", 50)


def test_prompt_record_round_trip_keeps_it_scorable():
    for prompt in WORLD.prompts("heldout", 60):
        record = json.loads(json.dumps(prompt.to_record()))
        assert record["prompt"] == [{"role": "user", "content": prompt.text}]
        assert record["axis"] in {"helpful", "honest", "harmless"}
        rebuilt = Prompt.from_record(record)
        assert rebuilt == prompt
        assert WORLD.score(rebuilt, WORLD.ideal_response(rebuilt)).total == 1.0


def test_ideal_responses_are_short():
    prompts = WORLD.prompts("heldout", 300)
    lengths = sorted(len(WORLD.ideal_response(p).split()) for p in prompts)
    assert lengths[len(lengths) // 2] <= 10 and lengths[-1] <= 20
