"""benchmarks/training_seeds.py: which model is which seed, and the spread over seeds."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from training_seeds import (  # noqa: E402 - benchmarks/ is not a package
    DEFAULT_SEED,
    parse_seeds,
    seed_override,
    seeded_name,
    spread_over_seeds,
)


def paired(mean):
    est = {"mean": mean, "se": 0.01, "lower": mean - 0.02, "upper": mean + 0.02, "n": 500}
    return {"paired": {"baseline": "sft", "by": "scores.total", "difference": est}}


def test_the_default_seed_keeps_the_run_made_before_seeds_were_a_choice():
    assert DEFAULT_SEED == 0
    assert seeded_name("dpo:beta=0.5", 0) == "dpo:beta=0.5" and seed_override(0) == []
    assert seeded_name("dpo:beta=0.5", 2) == "dpo:beta=0.5@seed-2"
    assert seed_override(2) == ["train.seed=2"]


def test_spread_over_seeds_pairs_each_token_with_its_own_seeds():
    results = {
        "sft": {},
        "dpo": paired(0.02), "dpo@seed-1": paired(0.05), "dpo@seed-2": paired(0.08),
        "kto": paired(0.5), "kto@seed-1": paired(0.5),  # seed 2 failed: left out
    }  # fmt: skip
    spread = spread_over_seeds(results, ["dpo", "kto"], [0, 1, 2])
    assert set(spread) == {"dpo"}
    assert spread["dpo"]["across_seeds"]["mean"] == pytest.approx(0.05)
    assert [e["mean"] for e in spread["dpo"]["per_seed"]] == [0.02, 0.05, 0.08]
    assert spread_over_seeds(results, ["dpo"], [0]) == {}  # one seed: no spread to report


@pytest.mark.parametrize("text", ["", "0,0", "a,1"])
def test_bad_seed_lists_are_one_line(text):
    with pytest.raises(SystemExit, match="--seeds"):
        parse_seeds(text)
