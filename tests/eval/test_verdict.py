"""The verdict: a claim only where a paired difference is separated, a plain statement elsewhere."""

from alignlab.eval.stats import paired_difference
from alignlab.eval.verdict import claim, verdict


def comparison(model, baseline, left_out=()):
    """A `metrics["paired"]` dict of synthetic per-prompt scores, as paired_comparison makes it."""
    return {"by": "gold", **paired_difference(model, baseline).to_dict(), "left_out": left_out}


BASE = [0.1 * (i % 7) for i in range(200)]  # per-prompt scores of the baseline
BETTER = [b + 0.04 + 0.1 * ((i % 5) - 2) for i, b in enumerate(BASE)]  # +0.04 ± ~0.02
NOISY = [b + (0.3 if i % 2 else -0.29) for i, b in enumerate(BASE)]  # +0.005 in large noise


def test_separated_gain_is_claimed_with_its_paired_interval():
    c = comparison(BETTER, BASE)
    assert c["separated"]
    d = c["difference"]
    text = claim("DPO", c, "SFT", "gold", unit="heldout prompts")
    assert text.startswith("DPO beats SFT by +0.040 [")
    # the paired t interval, to two significant digits of its half-width (~0.02: 3 decimals)
    assert 0.01 < (d["upper"] - d["lower"]) / 2 < 0.1
    assert f"[{d['lower']:+.3f}, {d['upper']:+.3f}]" in text
    assert text.endswith("gold on 200 heldout prompts (paired).")


def test_separated_loss_is_said_the_other_way_round():
    c = comparison(BASE, BETTER)  # the model 0.04 below the baseline
    d = c["difference"]
    text = claim("base", c, "SFT", unit="heldout prompts")
    assert text.startswith("SFT beats base by +0.040 [")
    # the interval of the baseline's gain is the model's negated: [-upper, -lower]
    assert f"[{-d['upper']:+.3f}, {-d['lower']:+.3f}]" in text


def test_difference_not_separated_is_stated_plainly():
    c = comparison(NOISY, BASE)
    assert not c["separated"] and c["difference"]["lower"] < 0 < c["difference"]["upper"]
    text = claim("PPO", c, "SFT")
    assert text.startswith("PPO vs SFT: +0.005 [-") and text.endswith(", not separated.")
    assert "beats" not in text


def test_one_interval_excluding_zero_is_not_enough():
    """Separated needs both the t and the bootstrap interval to exclude 0."""
    c = comparison(BETTER, BASE)
    c["bootstrap"] = {**c["bootstrap"], "lower": -0.001}
    c["separated"] = False
    assert claim("DPO", c, "SFT").endswith("not separated.")


def test_missing_comparison_and_left_out_families():
    lines = verdict(
        {
            "DPO": comparison(BETTER, BASE, left_out=["arithmetic"]),
            "PPO": comparison(NOISY, BASE),
            "RM": None,
        },
        baseline="SFT",
        measure="gold",
    )
    assert lines[0].startswith("DPO beats SFT") and "not separated" in lines[1]
    assert lines[2] == "RM vs SFT: no paired comparison."
    assert lines[3].startswith("Gold over every prompt family but arithmetic")
    assert len(verdict({"PPO": comparison(NOISY, BASE)}, "SFT")) == 1  # nothing left out


def test_verdict_of_results_names_the_reference_and_skips_it():
    from alignlab.eval.verdict import verdict_of_results

    def result(folder, model_scores):
        return {"model": folder, "paired": {**comparison(model_scores, BASE), "baseline": "r/sft"}}

    results = {
        "sft": result("r/sft", BASE),  # the reference against itself
        "dpo": result("r/dpo", BETTER),
        "oracle": result("oracle", [1.0] * len(BASE)),
    }
    lines = verdict_of_results(results, unit="valid prompts", leave_out=("oracle",))
    assert len(lines) == 1 and lines[0].startswith("dpo beats sft by +0.040")
    assert "gold on 200 valid prompts" in lines[0]
    # without the reference among the results, it is called by its folder
    del results["sft"]
    assert verdict_of_results(results, leave_out=("oracle",))[0].startswith("dpo beats r/sft")
    assert verdict_of_results({"m": {"model": "m"}}) == []  # no reference, no verdict
