"""Simulated preference annotators: Bradley-Terry on gold, label noise, biases, majority vote.

One annotator comparing responses a and b (gold totals g_a, g_b, lengths in words n_a, n_b):

    logit    = (g_a - g_b) / temperature + length_bias * (n_a - n_b)
    P(a > b) = sigmoid(logit)                         (Bradley-Terry on gold)
    then the label is flipped with probability flip_rate (careless clicks)

so overall P(a > b) = (1 - flip_rate) * sigmoid(logit) + flip_rate * (1 - sigmoid(logit)).
A panel of annotators labels every pair; the pair's label is the majority vote (ties broken
by a seeded coin). Buying a label set costs pairs x annotators labels. `fit_bradley_terry`
recovers (temperature, flip_rate) from labels by maximum likelihood, e.g. to check how
noisy a label set is. `label_binary` asks the same annotators yes / no about single items
(gold above or below a threshold), the binary feedback of text-to-image work.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from alignlab.lab import judge
from alignlab.lab.gold import Prompt, gold_score


@dataclass(frozen=True)
class Annotator:
    """One simulated labeller (see the module docstring for the label model).

    temperature: gold difference that moves the odds by a factor e; smaller is sharper.
    flip_rate: probability that a label is flipped after the Bradley-Terry draw.
    length_bias: logit added per word that a is longer than b (>0 favours longer answers,
        a systematic bias that a reward model can learn and a policy can then exploit).
    """

    temperature: float = 0.15
    flip_rate: float = 0.05
    length_bias: float = 0.0

    def prob_prefers_a(self, gold_margin: float, word_margin: float = 0.0) -> float:
        """P(label says a > b) for gold_a - gold_b = `gold_margin`, n_a - n_b = `word_margin`."""
        p = _sigmoid(gold_margin / self.temperature + self.length_bias * word_margin)
        return (1 - self.flip_rate) * p + self.flip_rate * (1 - p)


@dataclass(frozen=True)
class LabelSet:
    """Labels for a list of pairs (a_i, b_i).

    prefers_a: the final label per pair (majority vote of the panel).
    votes: per pair, each annotator's label.
    gold_margins: gold_a - gold_b per pair.
    cost: labels bought = pairs x annotators.
    gold_agreement: fraction of final labels that pick the gold-better response, over the
        pairs whose gold differs (ties excluded); nan when every pair is tied.
    annotator_agreement: the same fraction for each annotator's own labels.
    """

    prefers_a: tuple[bool, ...]
    votes: tuple[tuple[bool, ...], ...]
    gold_margins: tuple[float, ...]
    cost: int
    gold_agreement: float
    annotator_agreement: tuple[float, ...]


def agreement_with_gold(prefers_a: Sequence[bool], gold_margins: Sequence[float]) -> float:
    """Fraction of labels choosing the gold-better response, gold ties excluded (nan if none)."""
    decided = [(label, m) for label, m in zip(prefers_a, gold_margins) if m != 0]
    if not decided:
        return math.nan
    return sum(label == (m > 0) for label, m in decided) / len(decided)


def _majority(votes: tuple[bool, ...], rng: random.Random) -> bool:
    """A panel's label: the majority of its votes, a tie broken by a coin from `rng`."""
    count = Counter(votes)
    if count[True] == count[False]:
        return rng.random() < 0.5
    return count[True] > count[False]


def label_pairs(
    gold_a: Sequence[float],
    gold_b: Sequence[float],
    annotators: Sequence[Annotator],
    seed: int = 0,
    words_a: Sequence[int] | None = None,
    words_b: Sequence[int] | None = None,
) -> LabelSet:
    """Label pairs with known gold totals (and lengths, for length-biased annotators)."""
    if not annotators:
        raise ValueError("need at least one annotator")
    if len(gold_a) != len(gold_b):
        raise ValueError("gold_a and gold_b must have the same length")
    words_a = words_a if words_a is not None else [0] * len(gold_a)
    words_b = words_b if words_b is not None else [0] * len(gold_b)
    rng = random.Random(f"alignlab-lab/annotators/{seed}")
    margins = [a - b for a, b in zip(gold_a, gold_b)]
    votes, final = [], []
    for margin, n_a, n_b in zip(margins, words_a, words_b):
        pair_votes = tuple(
            rng.random() < annotator.prob_prefers_a(margin, n_a - n_b) for annotator in annotators
        )
        final.append(_majority(pair_votes, rng))
        votes.append(pair_votes)
    per_annotator = tuple(
        agreement_with_gold([v[i] for v in votes], margins) for i in range(len(annotators))
    )
    return LabelSet(
        prefers_a=tuple(final),
        votes=tuple(votes),
        gold_margins=tuple(margins),
        cost=len(margins) * len(annotators),
        gold_agreement=agreement_with_gold(final, margins),
        annotator_agreement=per_annotator,
    )


@dataclass(frozen=True)
class BinaryLabelSet:
    """Yes/no labels ("does this match the prompt?") for a list of items with known gold.

    says_yes: the final label per item (majority vote of the panel, ties by a seeded coin).
    votes: per item, each annotator's label.
    golds: the gold of each item.
    threshold: the gold at which an annotator is as likely to say yes as no.
    cost: labels bought = items x annotators.
    gold_agreement: fraction of final labels equal to (gold > threshold), items at the
        threshold excluded; nan when every item is at it.
    """

    says_yes: tuple[bool, ...]
    votes: tuple[tuple[bool, ...], ...]
    golds: tuple[float, ...]
    threshold: float
    cost: int
    gold_agreement: float


def label_binary(
    golds: Sequence[float],
    annotators: Sequence[Annotator],
    threshold: float = 0.5,
    seed: int = 0,
) -> BinaryLabelSet:
    """Binary feedback as Lee et al. 2023 collect it (arXiv 2302.12192: does the image match
    its prompt?): each annotator says yes with the pairwise model's probability for the gold's
    margin over `threshold`, P(yes) = (1 - flip) sigmoid((g - threshold) / T) + flip (1 - ...)
    (`Annotator.prob_prefers_a`; length bias does not apply)."""
    if not annotators:
        raise ValueError("need at least one annotator")
    rng = random.Random(f"alignlab-lab/annotators/binary/{seed}")
    votes, final = [], []
    for gold in golds:
        item = tuple(rng.random() < a.prob_prefers_a(gold - threshold) for a in annotators)
        final.append(_majority(item, rng))
        votes.append(item)
    return BinaryLabelSet(
        says_yes=tuple(final),
        votes=tuple(votes),
        golds=tuple(golds),
        threshold=threshold,
        cost=len(golds) * len(annotators),
        gold_agreement=agreement_with_gold(final, [g - threshold for g in golds]),
    )


def label_responses(
    prompts: Sequence[Prompt],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    annotators: Sequence[Annotator],
    seed: int = 0,
) -> LabelSet:
    """Label response pairs to `prompts`, scoring both sides with the gold reward."""
    gold_a = [gold_score(p, r).total for p, r in zip(prompts, responses_a)]
    gold_b = [gold_score(p, r).total for p, r in zip(prompts, responses_b)]
    words_a = [len(judge.words(r)) for r in responses_a]
    words_b = [len(judge.words(r)) for r in responses_b]
    return label_pairs(gold_a, gold_b, annotators, seed, words_a, words_b)


def fit_bradley_terry(
    gold_margins: Sequence[float], prefers_a: Sequence[bool]
) -> tuple[float, float]:
    """Maximum-likelihood (temperature, flip_rate) of one unbiased annotator's labels.

    Profile likelihood: golden-section search over flip_rate in [0, 0.5), each step
    maximising over log(temperature) in [log 0.005, log 5] by a nested golden search.
    Margins are rounded to 0.01 and counted, so the cost does not grow with the labels.
    """
    counts: Counter[tuple[float, bool]] = Counter(
        (round(m, 2), bool(label)) for m, label in zip(gold_margins, prefers_a)
    )

    def log_likelihood(temperature: float, flip_rate: float) -> float:
        annotator = Annotator(temperature, flip_rate)
        total = 0.0
        for (margin, label), count in counts.items():
            p = annotator.prob_prefers_a(margin)
            total += count * math.log(max(p if label else 1 - p, 1e-12))
        return total

    def best_temperature(flip_rate: float) -> tuple[float, float]:
        log_t = _golden_max(
            lambda x: log_likelihood(math.exp(x), flip_rate), math.log(0.005), math.log(5.0)
        )
        return math.exp(log_t), log_likelihood(math.exp(log_t), flip_rate)

    flip_rate = _golden_max(lambda f: best_temperature(f)[1], 0.0, 0.499)
    return best_temperature(flip_rate)[0], flip_rate


def _golden_max(f: Callable[[float], float], lo: float, hi: float, iterations: int = 30) -> float:
    """Argmax of a unimodal `f` on [lo, hi] by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
        else:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = f(a)
    return (lo + hi) / 2


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    z = math.exp(x)
    return z / (1 + z)
