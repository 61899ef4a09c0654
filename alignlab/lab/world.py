"""`LabWorld`: a seeded fictional world with prompt families and a gold reward.

Splits. Every pool a prompt is built from (fact question templates, arithmetic and
instruction templates, request templates, framing wrappers, invented unknown-entity names,
harmful / benign topic pairs) is partitioned into disjoint train / valid / heldout parts, so
heldout prompts use phrasings, unknown names and topics that never occur in train. The
knowledge base itself (entities and their facts) is shared by every split: a fact must be
known to be asked about. Only the unframed wrapper "{q}" is shared as well.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.lab import content
from alignlab.lab.gold import FAMILIES, GoldScore, Prompt, gold_score, ideal_response, word_budget
from alignlab.lab.knowledge import KnowledgeBase, invent_names

SPLITS = ("train", "valid", "heldout")
SPLIT_FRACTIONS = {"valid": 0.15, "heldout": 0.25}  # of every pool; train gets the rest
DEFAULT_FAMILY_WEIGHTS = {
    "fact": 0.30,
    "unknown": 0.15,
    "arithmetic": 0.10,
    "instruction": 0.15,
    "harmful": 0.15,
    "benign": 0.15,
}
# Share of honesty questions that name an invented entity (the rest ask a known entity
# about an attribute the world never records).
UNKNOWN_ENTITY_SHARE = 0.6
PLAIN_SHARE = 0.5  # share of prompts without a framing wrapper


@dataclass(frozen=True)
class SplitPools:
    """The part of every prompt-building pool that one split may use."""

    fact_templates: tuple[str, ...]
    arithmetic_templates: Mapping[str, tuple[str, ...]]
    instruction_templates: Mapping[str, tuple[str, ...]]
    request_templates: tuple[str, ...]
    wrappers: tuple[str, ...]
    unknown_names: tuple[str, ...]
    request_pairs: tuple[tuple[str, str, str, tuple[str, ...]], ...]

    @property
    def harmful_topics(self) -> tuple[str, ...]:
        return tuple(pair[0] for pair in self.request_pairs)

    @property
    def benign_topics(self) -> tuple[str, ...]:
        return tuple(pair[1] for pair in self.request_pairs)


def partition(items: Sequence[Any], rng: random.Random) -> dict[str, tuple]:
    """Shuffle `items` and cut them into disjoint train/valid/heldout parts (each non-empty)."""
    if len(items) < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} items to split, got {len(items)}")
    shuffled = list(items)
    rng.shuffle(shuffled)
    n_valid = max(1, round(SPLIT_FRACTIONS["valid"] * len(items)))
    n_heldout = max(1, round(SPLIT_FRACTIONS["heldout"] * len(items)))
    n_train = len(items) - n_valid - n_heldout
    return {
        "train": tuple(shuffled[:n_train]),
        "valid": tuple(shuffled[n_train : n_train + n_valid]),
        "heldout": tuple(shuffled[n_train + n_valid :]),
    }


def interleaved_schedule(names: Sequence[str], weights: Mapping[str, float], n: int) -> list[str]:
    """`n` of `names` in an interleaved order whose every prefix matches `weights` closely
    (each next one the most behind its share; ties go to the earlier name)."""
    counts = dict.fromkeys(names, 0)
    schedule = []
    for i in range(n):
        name = max(names, key=lambda k: weights[k] * (i + 1) - counts[k])
        counts[name] += 1
        schedule.append(name)
    return schedule


class LabWorld:
    """A fictional world: knowledge base, prompt families per split, gold reward, oracle.

    Args:
        seed: determines everything (knowledge base, pool splits, prompts).
        n_entities: invented entities in the knowledge base (split evenly over 3 kinds).
        attributes_per_entity: recorded attributes per entity (1-4); the rest of the kind's
            attributes become honesty questions.
        n_unknown_names: invented names that are *not* in the knowledge base, split
            train/valid/heldout like every other pool.
        family_weights: share of each prompt family in `prompts` (normalised).
    """

    def __init__(
        self,
        seed: int = 0,
        n_entities: int = 48,
        attributes_per_entity: int = 3,
        n_unknown_names: int = 90,
        family_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.seed = seed
        self.config = {
            "seed": seed,
            "n_entities": n_entities,
            "attributes_per_entity": attributes_per_entity,
            "n_unknown_names": n_unknown_names,
        }
        weights = dict(family_weights or DEFAULT_FAMILY_WEIGHTS)
        if set(weights) - set(FAMILIES) or sum(weights.values()) <= 0:
            raise ValueError(f"family_weights must weigh some of {FAMILIES}")
        total = sum(weights.values())
        self.family_weights = {f: weights.get(f, 0.0) / total for f in FAMILIES}
        self.config["family_weights"] = self.family_weights
        rng = random.Random(f"alignlab-lab/{seed}/world")
        taken: set[str] = set()
        self.kb = KnowledgeBase(rng, n_entities, attributes_per_entity, taken)
        unknown = partition(invent_names(rng, n_unknown_names, taken), rng)
        facts = partition(content.FACT_QUESTION_TEMPLATES, rng)
        requests = partition(content.REQUEST_TEMPLATES, rng)
        wrappers = partition(content.WRAPPERS, rng)
        pairs = partition(content.REQUEST_PAIRS, rng)
        arithmetic = {op: partition(t, rng) for op, t in content.ARITHMETIC_TEMPLATES.items()}
        instruction = {c: partition(t, rng) for c, t in content.INSTRUCTION_TEMPLATES.items()}
        self.pools = {
            split: SplitPools(
                fact_templates=facts[split],
                arithmetic_templates={op: parts[split] for op, parts in arithmetic.items()},
                instruction_templates={c: parts[split] for c, parts in instruction.items()},
                request_templates=requests[split],
                wrappers=wrappers[split],
                unknown_names=unknown[split],
                request_pairs=pairs[split],
            )
            for split in SPLITS
        }

    # --- public API ----------------------------------------------------------------------

    def prompts(self, split: str, n: int, stream: str = "") -> list[Prompt]:
        """`n` prompts of `split`, families mixed by `family_weights`, deterministic.

        A different `stream` name gives an independent draw from the same split (e.g. one
        for SFT demonstrations, one for RL prompts). The result is prefix-stable:
        `prompts(s, 10)` equals `prompts(s, 100)[:10]`. Texts are distinct while the
        split's pools allow; small pools (harmful topics) repeat in long draws.
        """
        if split not in self.pools:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = random.Random(f"alignlab-lab/{self.seed}/prompts/{split}/{stream}")
        seen: set[str] = set()
        drawn = []
        for family in interleaved_schedule(FAMILIES, self.family_weights, n):
            for _ in range(20):  # retry a few times for a text not drawn yet
                prompt = self._make_prompt(family, split, rng)
                if prompt.text not in seen:
                    break
            seen.add(prompt.text)
            drawn.append(prompt)
        return drawn

    def score(self, prompt: Prompt, response: str) -> GoldScore:
        """Gold reward of `response`; total in [-1, 1] (formula in `alignlab.lab.gold`)."""
        return gold_score(prompt, response)

    def ideal_response(self, prompt: Prompt) -> str:
        """The oracle answer, scoring 1.0 (the maximum)."""
        return ideal_response(prompt)

    # --- prompt construction -------------------------------------------------------------

    def _make_prompt(self, family: str, split: str, rng: random.Random) -> Prompt:
        pools = self.pools[split]
        question, gold = getattr(self, f"_make_{family}")(pools, rng)
        wrapper = content.PLAIN_WRAPPER
        if rng.random() >= PLAIN_SHARE:
            wrapper = rng.choice(pools.wrappers)
        text = wrapper.format(q=question)
        # The word budget depends on the oracle answer, which needs the finished prompt; the
        # gold dict is filled in before the prompt leaves this method.
        prompt = Prompt(text, family, split, gold)
        gold["max_words"] = word_budget(ideal_response(prompt))
        return prompt

    def _make_fact(self, pools: SplitPools, rng: random.Random) -> tuple[str, dict]:
        entity = rng.choice(self.kb.entities)
        fact = rng.choice(entity.facts)
        distractors = sorted(set(self.kb.candidate_values(fact.attribute)) - {fact.value})
        question = rng.choice(pools.fact_templates).format(e=entity.name, a=fact.noun)
        gold = {
            "entity": entity.name,
            "attribute": fact.attribute,
            "noun": fact.noun,
            "answer": fact.value,
            "distractors": distractors,
        }
        return question, gold

    def _make_unknown(self, pools: SplitPools, rng: random.Random) -> tuple[str, dict]:
        if rng.random() < UNKNOWN_ENTITY_SHARE:
            name = rng.choice(pools.unknown_names)
            kind = rng.choice(list(content.ENTITY_KINDS))
            recorded = content.ENTITY_KINDS[kind][1][: self.kb.attributes_per_entity]
            attribute, reason = rng.choice(recorded), "unknown_entity"
        else:
            entity = rng.choice(self.kb.entities)
            name, reason = entity.name, "unrecorded_attribute"
            attribute = rng.choice(self.kb.unrecorded_attributes(entity.kind))
        noun = content.ATTRIBUTE_NOUNS[attribute]
        question = rng.choice(pools.fact_templates).format(e=name, a=noun)
        # Any value this attribute could take would be an invention.
        distractors = sorted(self.kb.candidate_values(attribute))
        gold = {
            "entity": name,
            "attribute": attribute,
            "noun": noun,
            "reason": reason,
            "distractors": distractors,
        }
        return question, gold

    def _make_arithmetic(self, pools: SplitPools, rng: random.Random) -> tuple[str, dict]:
        op = rng.choice(sorted(pools.arithmetic_templates))
        if op == "+":
            x, y = rng.randint(2, 20), rng.randint(2, 20)
        elif op == "-":
            x = rng.randint(5, 30)
            y = rng.randint(1, x - 1)  # keep results positive and non-zero
        else:
            x, y = rng.randint(2, 9), rng.randint(2, 9)
        answer = {"+": x + y, "-": x - y, "*": x * y}[op]
        question = rng.choice(pools.arithmetic_templates[op]).format(x=x, y=y)
        return question, {"x": x, "y": y, "op": op, "answer": answer}

    def _make_instruction(self, pools: SplitPools, rng: random.Random) -> tuple[str, dict]:
        constraint = rng.choice(sorted(pools.instruction_templates))
        category = rng.choice(sorted(content.CATEGORIES))
        singular, members = content.CATEGORIES[category]
        n = rng.choice((2, 3, 4))
        word = rng.choice(content.UPPERCASE_WORDS)
        template = rng.choice(pools.instruction_templates[constraint])
        article = "an" if singular[0] in "aeiou" else "a"
        question = template.format(
            n=content.NUMBER_WORDS[n], c=category, s=singular, a_s=f"{article} {singular}", w=word
        )
        gold: dict[str, Any] = {"constraint": constraint}
        if constraint == "upper":
            gold["word"] = word
        else:
            gold.update(category=category, members=list(members), n=1)
            if constraint in ("count", "numbered"):
                gold["n"] = n
        return question, gold

    def _make_harmful(self, pools: SplitPools, rng: random.Random) -> tuple[str, dict]:
        task = rng.choice(pools.request_pairs)[0]
        return rng.choice(pools.request_templates).format(t=task), {"task": task}

    def _make_benign(self, pools: SplitPools, rng: random.Random) -> tuple[str, dict]:
        _, task, answer, keywords = rng.choice(pools.request_pairs)
        question = rng.choice(pools.request_templates).format(t=task)
        return question, {"task": task, "answer": answer, "keywords": list(keywords)}
