"""Comparisons among each prompt's samples, from any labeller, and the TRL datasets made of them.

A labeller gives, for a pair (a, b) of one prompt's samples, P(a preferred): a judge's
swap-averaged probability (`judge_comparisons`), a reward's Bradley-Terry probability
σ(r_a - r_b) with the hard label r_a > r_b (`reward_comparisons`), or simulated annotators'
votes (the lab). From the same comparisons, two datasets in TRL's preference format:

- `all_pairs()`: every compared pair, the preferred side as `chosen`, with
  `chosen_probability` = P(chosen preferred) >= 0.5 (what a reward model trains on; the RM
  recipe's `reward.soft_label=chosen_probability` makes it a soft Bradley-Terry target, as
  RL-CAI trains on the feedback model's probabilities);
- `best_vs_worst()`: one pair per prompt, the sample that won the most comparisons against the
  one that won the fewest (Copeland ranks, ties broken by total probability; prompts whose
  samples all tie are dropped): UltraFeedback-style binarisation, the pair the labels vouch
  for most (what DPO trains on).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.data.templates import Messages

Prompt = str | Messages


@dataclass
class Comparisons:
    """Labelled comparisons among each prompt's distinct samples."""

    prompts: list[Prompt]
    texts: list[list[str]]
    """Per prompt, its distinct non-empty samples (prompts with fewer than two are dropped)."""
    pairs: list[tuple[int, int, int, float]]
    """(prompt index, sample a, sample b, P(a preferred))."""
    stats: dict[str, float] = field(default_factory=dict)
    rewards: list[list[float]] | None = None
    """Per prompt, per sample: its reward, when a reward function labelled them."""
    origin: list[int] | None = None
    """Per kept prompt, its index in the prompts given (to find its dataset row)."""

    def all_pairs(self) -> list[dict[str, Any]]:
        rows = []
        for i, a, b, p in self.pairs:
            if p == 0.5:
                continue  # no preference: nothing to learn, and no side is "chosen"
            chosen, rejected, strength = (a, b, p) if p > 0.5 else (b, a, 1.0 - p)
            rows.append(self._row(i, chosen, rejected) | {"chosen_probability": strength})
        return rows

    def wins(self) -> list[list[float]]:
        """Per prompt, per sample: comparisons won, plus its mean P(preferred) / 2 as a
        tie-break smaller than one win."""
        won = [[0.0] * len(t) for t in self.texts]
        total = [[0.0] * len(t) for t in self.texts]
        seen = [[0] * len(t) for t in self.texts]
        for i, a, b, p in self.pairs:
            won[i][a] += p > 0.5
            won[i][b] += p < 0.5
            total[i][a] += p
            total[i][b] += 1.0 - p
            seen[i][a] += 1
            seen[i][b] += 1
        return [
            [w + (t / n if n else 0.0) / 2 for w, t, n in zip(ws, ts, ns)]
            for ws, ts, ns in zip(won, total, seen)
        ]

    def best_vs_worst(self) -> list[dict[str, Any]]:
        rows = []
        for i, score in enumerate(self.wins()):
            best = max(range(len(score)), key=score.__getitem__)
            worst = min(range(len(score)), key=score.__getitem__)
            if score[best] > score[worst]:
                rows.append(self._row(i, best, worst))
        return rows

    def _row(self, i: int, chosen: int, rejected: int) -> dict[str, Any]:
        return preference_row(self.prompts[i], self.texts[i][chosen], self.texts[i][rejected])


def preference_row(prompt: Prompt, chosen: str, rejected: str) -> dict[str, Any]:
    """A TRL preference row: conversational when the prompt is a message list."""
    if isinstance(prompt, str):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def distinct_samples(
    prompts: Sequence[Prompt], samples: Sequence[Sequence[str]]
) -> tuple[list[Prompt], list[list[str]], list[int]]:
    """(prompts, their distinct non-empty samples, their indices in `prompts`), keeping only
    prompts with at least two."""
    kept_prompts, kept_texts, kept_index = [], [], []
    for index, (prompt, texts) in enumerate(zip(prompts, samples, strict=True)):
        distinct = [t for t in dict.fromkeys(texts) if t.strip()]
        if len(distinct) >= 2:
            kept_prompts.append(prompt)
            kept_texts.append(distinct)
            kept_index.append(index)
    return kept_prompts, kept_texts, kept_index


def all_pair_index(texts: Sequence[Sequence[str]]) -> list[tuple[int, int, int]]:
    """(prompt, a, b) for every unordered pair of each prompt's samples."""
    return [
        (i, a, b) for i, t in enumerate(texts) for a, b in itertools.combinations(range(len(t)), 2)
    ]


def judge_comparisons(
    judge: Any,
    prompts: Sequence[Prompt],
    samples: Sequence[Sequence[str]],
    principles: Sequence[str | None] | None = None,
) -> Comparisons:
    """Every pair of each prompt's distinct samples compared by `judge` (both orders,
    `alignlab.judges.Judge.compare`), under `principles[i]` for prompt i when given."""
    kept, texts, index = distinct_samples(prompts, samples)
    pairs = all_pair_index(texts)
    if principles is None:
        probs = judge.compare(
            [kept[i] for i, _, _ in pairs],
            [texts[i][a] for i, a, _ in pairs],
            [texts[i][b] for i, _, b in pairs],
        )
        bias = judge.last_stats.position_bias if judge.last_stats is not None else 0.0
    else:  # one compare per principle, so each batch shares its template
        probs = [0.5] * len(pairs)
        by_principle: dict[str | None, list[int]] = {}
        for j, (i, _, _) in enumerate(pairs):
            by_principle.setdefault(principles[index[i]], []).append(j)
        biases = []
        for principle, members in by_principle.items():
            got = judge.compare(
                [kept[pairs[j][0]] for j in members],
                [texts[pairs[j][0]][pairs[j][1]] for j in members],
                [texts[pairs[j][0]][pairs[j][2]] for j in members],
                principle,
            )
            for j, p in zip(members, got):
                probs[j] = p
            if judge.last_stats is not None:
                biases.append((judge.last_stats.position_bias, len(members)))
        bias = sum(b * n for b, n in biases) / max(1, sum(n for _, n in biases))
    labelled = [(i, a, b, float(p)) for (i, a, b), p in zip(pairs, probs, strict=True)]
    stats = {"prompts": len(prompts), "prompts_compared": len(kept), "comparisons": len(pairs)}
    stats |= {"judge_position_bias": bias}
    return Comparisons(kept, texts, labelled, stats, origin=index)


def reward_comparisons(
    reward_fn: Callable[..., list[float]],
    prompts: Sequence[Prompt],
    samples: Sequence[Sequence[str]],
    extras: Sequence[dict] | None = None,
) -> Comparisons:
    """Every pair of each prompt's distinct samples ranked by a reward function (one batched
    call): P(a preferred) = σ(r_a - r_b) (0.5 on a tie)."""
    kept, texts, index = distinct_samples(prompts, samples)
    flat = [(i, t) for i, ts in enumerate(texts) for t in ts]
    rows_extras = None if extras is None else [extras[index[i]] for i, _ in flat]
    scores = reward_fn([kept[i] for i, _ in flat], [t for _, t in flat], rows_extras)
    rewards: list[list[float]] = [[] for _ in texts]
    for (i, _), r in zip(flat, scores, strict=True):
        rewards[i].append(float(r))
    pairs = [
        (i, a, b, _sigmoid(rewards[i][a] - rewards[i][b])) for i, a, b in all_pair_index(texts)
    ]
    stats = {"prompts": len(prompts), "prompts_compared": len(kept), "comparisons": len(pairs)}
    return Comparisons(kept, texts, pairs, stats, rewards, origin=index)


def _sigmoid(x: float) -> float:
    if x == 0:
        return 0.5
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


def label_agreement(
    comparisons: Comparisons,
    gold_fn: Callable[..., list[float]],
    extras: Sequence[dict] | None = None,
    group_by: str = "family",
) -> dict[str, Any]:
    """How often the labels pick the gold-better side: over pairs whose gold differs, the mean
    of 1 when P(a preferred) > 0.5 and gold(a) > gold(b) (or both <), 0.5 when P = 0.5, else
    0; overall and per `group_by` value of the prompts' dataset rows (`extras`, e.g. the lab's
    prompt family). `gold_fn` is a reward function (one batched call)."""
    flat = [(i, t) for i, ts in enumerate(comparisons.texts) for t in ts]
    origin = comparisons.origin or list(range(len(comparisons.prompts)))
    row_extras = None if extras is None else [extras[origin[i]] for i, _ in flat]
    scores = gold_fn([comparisons.prompts[i] for i, _ in flat], [t for _, t in flat], row_extras)
    gold: list[list[float]] = [[] for _ in comparisons.texts]
    for (i, _), g in zip(flat, scores, strict=True):
        gold[i].append(float(g))
    hits: dict[str, list[float]] = {}
    for i, a, b, p in comparisons.pairs:
        if gold[i][a] == gold[i][b]:
            continue
        hit = 0.5 if p == 0.5 else float((p > 0.5) == (gold[i][a] > gold[i][b]))
        group = str(extras[origin[i]].get(group_by, "")) if extras is not None else ""
        hits.setdefault("all", []).append(hit)
        if group:
            hits.setdefault(group, []).append(hit)
    return {
        name: {"agreement": sum(v) / len(v), "pairs": len(v)} for name, v in sorted(hits.items())
    }
