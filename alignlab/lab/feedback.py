"""Human feedback on a policy's own samples, simulated: the data of every preference method.

1. `sample_responses`: K samples per prompt from the policy (temperature 1);
2. `label_samples`: a panel of simulated annotators labels every pair of a prompt's distinct,
   non-empty samples (K(K-1)/2 pairs, majority vote);
3. from the same labels, two datasets in the TRL formats:
   - `all_pairs`: every labelled pair (what a reward model learns from);
   - `best_vs_worst`: one pair per prompt, the sample that won the most comparisons against
     the one that won the fewest (Copeland ranks; prompts whose samples all tie are dropped).
     This is how UltraFeedback-style sets are binarised: the gap between the two sides is
     the largest the labels can vouch for, so the pair carries the least label noise.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.lab.annotators import Annotator, label_pairs
from alignlab.lab.gold import Prompt
from alignlab.lab.world import LabWorld

PANEL = (Annotator(temperature=0.15, flip_rate=0.1),) * 3
"""Three annotators, Bradley-Terry on gold at temperature 0.15, 10% careless flips."""


def sample_responses(
    model_dir: str | Path,
    prompts: Sequence[Prompt],
    k: int,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    seed: int = 1,
) -> list[list[str]]:
    """K samples (temperature 1) per prompt from the model in `model_dir`, on the GPU if any."""
    from alignlab.eval.harness import load_for_eval
    from alignlab.models.generation import generate

    loaded = load_for_eval(str(model_dir))
    gens = generate(
        loaded.model, loaded.tokenizer, [p.messages for p in prompts for _ in range(k)],
        max_new_tokens=max_new_tokens, temperature=1.0, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    return [[gens[i * k + j].text for j in range(k)] for i in range(len(prompts))]


@dataclass
class Feedback:
    """Labelled comparisons among each prompt's samples."""

    prompts: list[Prompt]
    texts: list[list[str]]
    """Per prompt, its distinct non-empty samples (prompts with fewer than two are dropped)."""
    comparisons: list[tuple[int, int, int, bool]]
    """(prompt index, sample a, sample b, the panel prefers a)."""
    stats: dict[str, float]

    def all_pairs(self) -> list[dict[str, Any]]:
        return [
            _pair(self.prompts[i], self.texts[i][a], self.texts[i][b], a_wins)
            for i, a, b, a_wins in self.comparisons
        ]

    def best_vs_worst(self) -> list[dict[str, Any]]:
        wins: list[list[int]] = [[0] * len(t) for t in self.texts]
        for i, a, b, a_wins in self.comparisons:
            wins[i][a if a_wins else b] += 1
        rows = []
        for i, counts in enumerate(wins):
            best = max(range(len(counts)), key=counts.__getitem__)
            worst = min(range(len(counts)), key=counts.__getitem__)
            if counts[best] > counts[worst]:
                rows.append(_pair(self.prompts[i], self.texts[i][best], self.texts[i][worst], True))
        return rows


def _pair(prompt: Prompt, a: str, b: str, a_wins: bool) -> dict[str, Any]:
    chosen, rejected = (a, b) if a_wins else (b, a)
    return {
        "prompt": prompt.messages,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def label_samples(
    world: LabWorld,
    prompts: Sequence[Prompt],
    samples: Sequence[Sequence[str]],
    panel: Sequence[Annotator] = PANEL,
    seed: int = 0,
) -> Feedback:
    """The panel's labels on every pair of each prompt's distinct, non-empty samples."""
    kept_prompts: list[Prompt] = []
    kept_texts: list[list[str]] = []
    for prompt, texts in zip(prompts, samples, strict=True):
        distinct = [t for t in dict.fromkeys(texts) if t.strip()]
        if len(distinct) >= 2:
            kept_prompts.append(prompt)
            kept_texts.append(distinct)
    index = [
        (i, a, b)
        for i, texts in enumerate(kept_texts)
        for a, b in itertools.combinations(range(len(texts)), 2)
    ]
    gold = [[world.score(p, t).total for t in texts] for p, texts in zip(kept_prompts, kept_texts)]
    labels = label_pairs(
        [gold[i][a] for i, a, _ in index], [gold[i][b] for i, _, b in index], panel, seed=seed
    )
    comparisons = [(i, a, b, w) for (i, a, b), w in zip(index, labels.prefers_a, strict=True)]
    stats = {
        "prompts": len(prompts),
        "prompts_with_two_distinct_samples": len(kept_prompts),
        "comparisons": len(comparisons),
        "labels_bought": labels.cost,
        "gold_agreement": labels.gold_agreement,
    }
    return Feedback(kept_prompts, kept_texts, comparisons, stats)
