"""paired_comparison over scored samples and combine_seeds over training seeds, by hand."""

import math
from types import SimpleNamespace

import pytest

from alignlab.eval.paired import combine_seeds, paired_comparison, per_prompt_means


def samples(scores_per_prompt):
    """One sample object per score: prompt i's scores are scores_per_prompt[i]."""
    return [
        SimpleNamespace(prompt_index=i, score=score)
        for i, scores in enumerate(scores_per_prompt)
        for score in scores
    ]


def score(sample):
    return sample.score


def test_samples_of_a_prompt_are_averaged_before_pairing():
    model = samples([[1.0, 0.0], [0.5, 0.5], [1.0, 1.0], [0.0, 0.2]])  # means .5 .5 1 .1
    baseline = samples([[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.0]])  # 0 .25 .5 0
    assert per_prompt_means(model, score) == {0: 0.5, 1: 0.5, 2: 1.0, 3: 0.1}
    families = {0: "a", 1: "a", 2: "b", 3: "b"}
    out = paired_comparison(model, baseline, score, families, "sft", "scores.total")
    d = [0.5, 0.25, 0.5, 0.1]
    mean = sum(d) / 4
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert (out["baseline"], out["by"]) == ("sft", "scores.total")
    assert out["difference"]["mean"] == pytest.approx(mean)
    assert out["difference"]["se"] == pytest.approx(s / 2)
    assert out["difference"]["n"] == 4  # prompts, not samples
    assert out["win_rate"]["wins"] == 4 and out["model_mean"]["mean"] == pytest.approx(0.525)
    assert out["by_family"]["a"]["difference"]["mean"] == pytest.approx(0.375)
    assert out["by_family"]["b"]["difference"]["mean"] == pytest.approx(0.3)


def test_different_prompts_are_refused():
    with pytest.raises(ValueError, match="same prompts"):
        paired_comparison(samples([[1.0], [0.0]]), samples([[1.0]]), score)


def _paired(mean, lower, upper, families=None):
    est = {"mean": mean, "se": (upper - lower) / 4, "lower": lower, "upper": upper, "n": 500}
    out = {"baseline": "sft", "by": "scores.total", "difference": est}
    if families:
        out["by_family"] = {f: {"difference": dict(est, mean=m)} for f, m in families.items()}
    return {"paired": out}


def test_combine_seeds_by_hand():
    runs = [
        {"sft": {}, "dpo": _paired(0.02, 0.00, 0.04, {"fact": 0.1}), "ppo": _paired(0.1, 0, 0.2)},
        {"sft": {}, "dpo": _paired(0.05, 0.03, 0.07, {"fact": 0.2})},
        {"sft": {}, "dpo": _paired(0.08, 0.06, 0.10, {"fact": 0.3, "math": 0.0})},
    ]
    combined = combine_seeds(runs)
    assert set(combined) == {"dpo"}  # sft has no comparison, ppo is missing from two seeds
    dpo = combined["dpo"]
    se = 0.03 / math.sqrt(3)  # per-seed means .02 .05 .08: s = 0.03
    assert dpo["across_seeds"]["mean"] == pytest.approx(0.05)
    assert dpo["across_seeds"]["lower"] == pytest.approx(0.05 - 4.3026527 * se, abs=1e-6)
    assert dpo["n_seeds"] == 3 and not dpo["separated"]
    assert [e["lower"] for e in dpo["per_seed"]] == [0.0, 0.03, 0.06]
    assert set(dpo["by_family"]) == {"fact"}  # only the families every seed has
    assert dpo["by_family"]["fact"]["across_seeds"]["mean"] == pytest.approx(0.2)
    runs[1]["dpo"]["paired"]["baseline"] = "base"
    with pytest.raises(ValueError, match="different baselines"):
        combine_seeds(runs)
