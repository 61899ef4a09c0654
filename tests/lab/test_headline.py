"""lab/evaluate.py: headline gold and its paired comparison leave the left-out families out,
for the lab's own evaluation and for results made elsewhere (add_headline)."""

import pytest

from alignlab.eval.harness import EvalPrompt, EvalResult, EvalSample
from alignlab.lab.evaluate import LEFT_OUT_OF_HEADLINE, add_headline
from alignlab.models.generation import Generation

FAMILIES = ["fact", LEFT_OUT_OF_HEADLINE[0], "harmful"]


def scored(gold_per_prompt):
    return [
        EvalSample(i, 0, Generation("q", [], [], "", True), scores={"total": g})
        for i, g in enumerate(gold_per_prompt)
    ]


def test_add_headline_pairs_a_foreign_result_with_the_reference_over_the_headline():
    n = 30
    prompts = [EvalPrompt("q", {"family": FAMILIES[i % 3]}) for i in range(n)]
    ref = scored([0.01 * i for i in range(n)])
    # +0.2 on headline prompts, +5 on the left-out family, which must not count
    gains = [
        5.0 if FAMILIES[i % 3] in LEFT_OUT_OF_HEADLINE else 0.2 + 0.01 * (i % 2) for i in range(n)
    ]
    other = EvalResult(metrics={}, samples=scored([0.01 * i + g for i, g in enumerate(gains)]))
    add_headline({"best-of-4": other}, prompts, ref, "runs/sft")
    headline = [i for i in range(n) if FAMILIES[i % 3] not in LEFT_OUT_OF_HEADLINE]
    paired = other.metrics["paired"]
    assert paired["difference"]["n"] == len(headline) == other.metrics["headline"]["n_prompts"]
    assert paired["difference"]["mean"] == pytest.approx(
        sum(gains[i] for i in headline) / len(headline)
    )
    assert paired["baseline"] == "runs/sft" and paired["left_out"] == list(LEFT_OUT_OF_HEADLINE)
    mean = sum(0.01 * i + gains[i] for i in headline) / len(headline)
    assert other.metrics["headline"]["scores"]["total"]["mean"] == pytest.approx(mean)
    # without the reference's samples there is nothing to pair: headline only
    alone = EvalResult(metrics={}, samples=scored([0.5] * n))
    add_headline({"x": alone}, prompts, None, None)
    assert "paired" not in alone.metrics and alone.metrics["headline"]["n_prompts"] == len(headline)
