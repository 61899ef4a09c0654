"""Pairwise labels -> per-response win rates: unpaired labels (KTO) and ranked lists (RRHF).

When a prompt's responses are compared in several pairs (every pair of K samples labelled,
UltraFeedback-style), a response's win rate, the fraction of its comparisons it won (its
Copeland score, normalised), says more about it than any single pair does:

- `unpaired_by_win_rate`: desirable if it won more than half of its comparisons, undesirable
  if it lost more than half, left out on an exact tie. This is KTO's per-response binary
  signal without the contradiction of splitting every pair, where a response that beats one
  sample and loses to another is both desirable and undesirable.
- `ranked_by_win_rate`: each prompt's responses scored by win rate (RRHF's ranked lists); a
  prompt whose responses all tie has no order to learn and is left out.

With one pair per prompt both reduce to the pair itself (1 win of 1 against 0 of 1).
Responses and prompts are matched by exact equality; the first pair of a prompt names its
record (file:line) in later errors.
"""

from __future__ import annotations

import json
from typing import Any

from alignlab.data.schema import Example


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def win_rates(pairs: list[Example]) -> list[tuple[Example, list[tuple[Any, int, int]]]]:
    """Per prompt (in order of first appearance): its first pair and, per distinct response
    (in order of first appearance), (response, wins, comparisons)."""
    groups: dict[str, tuple[Example, dict[str, list]]] = {}
    for pair in pairs:
        _, tally = groups.setdefault(_key(pair.prompt), (pair, {}))
        for response, won in ((pair.chosen, 1), (pair.rejected, 0)):
            entry = tally.setdefault(_key(response), [response, 0, 0])
            entry[1] += won
            entry[2] += 1
    return [(first, [tuple(e) for e in tally.values()]) for first, tally in groups.values()]


def unpaired_by_win_rate(pairs: list[Example]) -> list[Example]:
    """Unpaired examples: each response labelled desirable when it won more than half of its
    comparisons, undesirable when it lost more than half; exact ties left out."""
    out = []
    for first, responses in win_rates(pairs):
        for response, wins, n in responses:
            if 2 * wins != n:
                out.append(
                    Example(
                        prompt=first.prompt, completion=response, label=2 * wins > n,
                        record=first.record,
                    )
                )  # fmt: skip
    return out


def ranked_by_win_rate(pairs: list[Example]) -> list[Example]:
    """Ranked examples: each prompt's distinct responses scored by their win rate; prompts
    whose responses all have the same win rate are left out."""
    out = []
    for first, responses in win_rates(pairs):
        scores = [wins / n for _, wins, n in responses]
        if len(set(scores)) > 1:
            out.append(
                Example(
                    prompt=first.prompt, responses=[r for r, _, _ in responses], scores=scores,
                    record=first.record,
                )
            )  # fmt: skip
    return out
