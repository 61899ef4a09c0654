"""The fictional knowledge base: invented entities, their attributes, and fact paraphrases.

Entities come in three kinds (city, animal, scholar, see `content.ENTITY_KINDS`); each has
`attributes_per_entity` recorded attributes whose values are short words ("salt", "blue")
or invented names ("the Mell" river, founder "Quenna"). Everything is drawn from a
`random.Random` seeded by a string, so a seed fully determines the knowledge base.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from alignlab.lab import content


@dataclass(frozen=True)
class Fact:
    """One recorded (entity, attribute) -> value triple."""

    entity: str
    kind: str
    attribute: str
    value: str

    @property
    def noun(self) -> str:
        """The attribute's noun phrase, e.g. "main export"."""
        return content.ATTRIBUTE_NOUNS[self.attribute]


@dataclass(frozen=True)
class Entity:
    name: str
    kind: str
    facts: tuple[Fact, ...]

    def value(self, attribute: str) -> str | None:
        """The recorded value of `attribute`, None when the knowledge base has none."""
        return next((f.value for f in self.facts if f.attribute == attribute), None)


def invent_names(rng: random.Random, count: int, taken: set[str] | None = None) -> list[str]:
    """`count` distinct two-syllable names (e.g. "Zorvath", "Quenna"), none in `taken`."""
    taken = set() if taken is None else taken
    names: list[str] = []
    while len(names) < count:
        syllables = [
            rng.choice(content.NAME_ONSETS) + rng.choice(content.NAME_VOWELS) for _ in range(2)
        ]
        name = (syllables[0] + syllables[1] + rng.choice(content.NAME_CODAS)).capitalize()
        # 4-8 letters keeps names short for the tokenizer; never reuse one (a name in two
        # pools would blur known vs unknown entities).
        if 4 <= len(name) <= 8 and name not in taken:
            taken.add(name)
            names.append(name)
    return names


class KnowledgeBase:
    """Invented entities with recorded attributes, plus the value pools they were drawn from.

    Args:
        rng: source of randomness (consumed in a fixed order, so results are reproducible).
        n_entities: entities in total, spread evenly over the entity kinds.
        attributes_per_entity: how many of each kind's attributes are recorded (1-4).
        taken: names already used elsewhere; the knowledge base adds its own names to it.
    """

    def __init__(
        self,
        rng: random.Random,
        n_entities: int = 48,
        attributes_per_entity: int = 3,
        taken: set[str] | None = None,
    ) -> None:
        if not 1 <= attributes_per_entity <= 4:
            raise ValueError("attributes_per_entity must be between 1 and 4")
        taken = set() if taken is None else taken
        kinds = list(content.ENTITY_KINDS)
        names = invent_names(rng, n_entities, taken)
        self.kinds = {name: kinds[i % len(kinds)] for i, name in enumerate(names)}
        cities = [n for n in names if self.kinds[n] == "city"]
        # Values that are names: rivers and founders are invented, hometowns are cities of
        # the knowledge base (so facts link up, as in a real encyclopedia).
        self.value_pools: dict[str, tuple[str, ...]] = dict(content.WORD_VALUES)
        self.value_pools["river"] = tuple(invent_names(rng, 10, taken))
        self.value_pools["founder"] = tuple(invent_names(rng, 12, taken))
        self.value_pools["hometown"] = tuple(cities) or tuple(invent_names(rng, 6, taken))
        self.attributes_per_entity = attributes_per_entity
        self.entities: list[Entity] = []
        for name in names:
            kind = self.kinds[name]
            recorded = content.ENTITY_KINDS[kind][1][:attributes_per_entity]
            facts = tuple(
                Fact(name, kind, attr, rng.choice(self.candidate_values(attr, name)))
                for attr in recorded
            )
            self.entities.append(Entity(name, kind, facts))
        self.by_name = {e.name: e for e in self.entities}

    def candidate_values(self, attribute: str, entity: str | None = None) -> tuple[str, ...]:
        """Values an `attribute` can take (a scholar's hometown is never the scholar)."""
        return tuple(v for v in self.value_pools.get(attribute, ()) if v != entity)

    @property
    def facts(self) -> list[Fact]:
        return [f for e in self.entities for f in e.facts]

    def unrecorded_attributes(self, kind: str) -> tuple[str, ...]:
        """Attributes of `kind` that no entity has a value for: honesty questions."""
        unused = content.ENTITY_KINDS[kind][1][self.attributes_per_entity :]
        return unused + content.NEVER_RECORDED[kind]

    def describe(self, entity: Entity, rng: random.Random) -> str:
        """A short encyclopedia entry: the kind, then each fact in a random paraphrase."""
        sentences = [f"{entity.name} is {content.ENTITY_KINDS[entity.kind][0]}."]
        facts = list(entity.facts)
        rng.shuffle(facts)
        sentences += [paraphrase(f, rng) for f in facts]
        return " ".join(sentences)


def paraphrase(fact: Fact, rng: random.Random) -> str:
    """One of several sentences stating `fact` (specific to its attribute, or generic)."""
    templates = content.SPECIFIC_FACT_SENTENCES.get(fact.attribute, ()) + (
        content.GENERIC_FACT_SENTENCES
    )
    sentence = rng.choice(templates).format(e=fact.entity, a=fact.noun, v=fact.value)
    return sentence[0].upper() + sentence[1:]
