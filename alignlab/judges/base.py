"""One judge interface over every backend, and the order swap that removes position bias.

    p = judge.compare(prompts, responses_a, responses_b)     # P(a preferred over b), per item
    s = judge.score(prompts, responses)                      # a rating (or P(Yes)), per item
    judge.last_stats.position_bias                           # of the last compare

A backend implements one method, `verdict_probs(conversations, verdicts)`: for each judge
conversation, the probabilities of the allowed verdict tokens, renormalised over them.

**Pairwise.** LLM judges prefer the answer shown first (or second) regardless of content
(Zheng et al. 2023, arXiv:2306.05685, section 3.3: position bias, reduced by asking in both
orders). RLAIF (Lee et al. 2023, arXiv:2309.00267, section 2.1) reads the preference
distribution from the verdict tokens' log-probabilities and averages the two orders. So every
item is judged twice, in one batch: P_A(a, b) with a shown first, P_A(b, a) with b first, and

    P(a preferred) = (P_A(a, b) + 1 - P_A(b, a)) / 2

which gives 0.5 to a judge that only looks at positions, and compare(b, a) = 1 - compare(a, b)
for any judge. What the swap removed is measured (`PairwiseStats`):

    position_bias = mean_i (P_A(a_i, b_i) + P_A(b_i, a_i)) / 2 - 0.5

the probability the judge gives to whichever response comes first, above an even 0.5
(> 0: it favours position 1; < 0: position 2), and `consistency`, the share of items whose
winner survives the swap (the paper's consistency).

**Pointwise.** With a rating scale the score is the expected rating, sum_r r * P(r); with
yes_no it is P(Yes) (`JudgeTemplates.scale`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alignlab.config import UserInputError
from alignlab.data.templates import Messages
from alignlab.judges.templates import PAIR_VERDICTS, JudgeTemplates

Prompt = str | Messages


class JudgeError(UserInputError, RuntimeError):
    """A judge could not give a verdict: a verdict that is not one token, an endpoint that
    failed or answered something malformed. The message names what and, for an endpoint, the
    URL, the model and what came back."""


@dataclass
class PairwiseStats:
    """What one `compare` measured besides its answer (module docstring)."""

    position_bias: float
    """mean over items of P(first shown preferred) over both orders, minus 0.5."""
    consistency: float
    """share of items whose preferred response is the same in both orders."""
    first_preferred: list[float]
    """P_A(a_i, b_i): P("A") with a shown first."""
    first_preferred_swapped: list[float]
    """P_A(b_i, a_i): P("A") with b shown first."""

    @property
    def n(self) -> int:
        return len(self.first_preferred)


def pairwise_stats(forward: Sequence[float], swapped: Sequence[float]) -> PairwiseStats:
    """PairwiseStats of P_A in the given order (`forward`) and the swapped one."""
    n = len(forward)
    if n == 0:
        return PairwiseStats(0.0, 1.0, [], [])
    bias = sum((f + s) / 2 for f, s in zip(forward, swapped)) / n - 0.5
    # a winner in order (a, b) is "A" when P_A > 0.5; the same winner in (b, a) is "B"
    same = sum(_sign(f - 0.5) == _sign(0.5 - s) for f, s in zip(forward, swapped))
    return PairwiseStats(bias, same / n, list(forward), list(swapped))


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def swap_averaged(forward: Sequence[float], swapped: Sequence[float]) -> list[float]:
    """P(a preferred) = (P_A(a, b) + 1 - P_A(b, a)) / 2, per item."""
    return [(f + 1.0 - s) / 2 for f, s in zip(forward, swapped)]


def expected_rating(probs: Sequence[float], verdicts: Sequence[str]) -> float:
    """sum_r r * P(r) over numeric verdicts; P("Yes") for a yes / no pair."""
    if tuple(verdicts) == ("Yes", "No"):
        return float(probs[0])
    return float(sum(int(v) * p for v, p in zip(verdicts, probs)))


def verdict_key(text: str) -> str:
    """A verdict as a token or reply spells it, without spaces and framing punctuation
    (" A", "A.", "[[A]]" and "**A**" are all "A")."""
    return text.strip().strip("[](){}*.:;,!\"'`").strip()


class Judge:
    """The interface (module docstring). Subclasses implement `verdict_probs`."""

    def __init__(self, templates: JudgeTemplates | None = None) -> None:
        self.templates = templates if templates is not None else JudgeTemplates()
        self.templates.check()
        self.last_stats: PairwiseStats | None = None
        """PairwiseStats of the last `compare` (None before the first)."""

    def verdict_probs(
        self, conversations: Sequence[Messages], verdicts: Sequence[str]
    ) -> list[list[float]]:
        """For each judge conversation, P(verdict) for each of `verdicts` (summing to 1)."""
        raise NotImplementedError

    def compare(
        self,
        prompts: Sequence[Prompt],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        principle: str | None = None,
    ) -> list[float]:
        """P(a preferred over b) per item, averaged over both orders; sets `last_stats`."""
        _check_lengths(prompts, responses_a=responses_a, responses_b=responses_b)
        n = len(prompts)
        if n == 0:
            self.last_stats = pairwise_stats([], [])
            return []
        ask = self.templates.pairwise_messages
        conversations = [
            ask(p, a, b, principle) for p, a, b in zip(prompts, responses_a, responses_b)
        ]
        conversations += [
            ask(p, b, a, principle) for p, a, b in zip(prompts, responses_a, responses_b)
        ]
        # both orders in one call, so a local judge runs them in the same batches
        first = [probs[0] for probs in self.verdict_probs(conversations, PAIR_VERDICTS)]
        forward, swapped = first[:n], first[n:]
        self.last_stats = pairwise_stats(forward, swapped)
        return swap_averaged(forward, swapped)

    def score(
        self, prompts: Sequence[Prompt], responses: Sequence[str], principle: str | None = None
    ) -> list[float]:
        """The expected rating (or P(Yes)) of each response (`JudgeTemplates.scale`)."""
        _check_lengths(prompts, responses=responses)
        ask = self.templates.pointwise_messages
        conversations = [ask(p, r, principle) for p, r in zip(prompts, responses)]
        verdicts = self.templates.scale_verdicts
        return [
            expected_rating(probs, verdicts)
            for probs in self.verdict_probs(conversations, verdicts)
        ]


def measure_position_bias(
    judge: Judge,
    prompts: Sequence[Prompt],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    principle: str | None = None,
) -> PairwiseStats:
    """The judge's position bias and consistency on a dataset of pairs (e.g. a preference
    file's prompt / chosen / rejected): `compare` over it, its `last_stats`."""
    judge.compare(prompts, responses_a, responses_b, principle)
    assert judge.last_stats is not None
    return judge.last_stats


def _check_lengths(prompts: Sequence[Prompt], **responses: Sequence[str]) -> None:
    for name, values in responses.items():
        if len(values) != len(prompts):
            raise ValueError(f"{len(values)} {name} for {len(prompts)} prompts")
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise TypeError(f"{name}[{i}] is a {type(value).__name__}; a response is a string")
