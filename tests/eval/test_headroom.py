"""benchmarks/headroom.py: a method's gain as a share of oracle-SFT's, on the headline prompts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from headroom import ORACLE_SFT, append_headroom, headroom  # noqa: E402 - not a package

from alignlab.eval.harness import EvalPrompt, EvalResult, EvalSample  # noqa: E402
from alignlab.eval.paired import paired_comparison  # noqa: E402
from alignlab.lab.evaluate import gold_total  # noqa: E402
from alignlab.models.generation import Generation  # noqa: E402

FAMILIES = ["fact", "harmful", "arithmetic"]


def result(gold_per_prompt, samples_per_prompt=2, spread=0.1):
    """Two samples a prompt, their mean the given gold (so the per-prompt mean is exact)."""
    samples = []
    for i, gold in enumerate(gold_per_prompt):
        for k in range(samples_per_prompt):
            offset = spread if k % 2 else -spread
            samples.append(
                EvalSample(i, k, Generation("q", [], [], "", True), scores={"total": gold + offset})
            )
    return EvalResult(metrics={}, samples=samples)


def test_headroom_is_the_share_of_the_reachable_gain_over_the_headline_prompts():
    n = 30
    prompts = [EvalPrompt("q", {"family": FAMILIES[i % 3]}) for i in range(n)]
    sft = [0.01 * i for i in range(n)]
    # oracle-SFT gains 0.2 on headline prompts; the method 0.1 there, +-0.02 by prompt
    oracle = [g + 0.2 for g in sft]
    method = [g + 0.1 + (0.02 if i % 2 else -0.02) for i, g in enumerate(sft)]
    # on the left-out family the method gains far more: it must not count
    method = [m + 5.0 if FAMILIES[i % 3] == "arithmetic" else m for i, m in enumerate(method)]
    results = {"sft": result(sft), ORACLE_SFT: result(oracle), "dpo": result(method)}
    headline = [i for i in range(n) if FAMILIES[i % 3] != "arithmetic"]
    expected = sum(method[i] - sft[i] for i in headline) / sum(0.2 for _ in headline)
    shares = headroom(results, prompts, ["dpo", "missing"])
    assert set(shares) == {"dpo"}
    assert shares["dpo"]["mean"] == pytest.approx(expected, abs=1e-9)
    assert shares["dpo"]["lower"] < expected < shares["dpo"]["upper"]


def test_append_headroom_writes_a_section_naming_each_method(tmp_path):
    n = 12
    prompts = [EvalPrompt("q", {"family": "fact"}) for _ in range(n)]
    gold = {
        "sft": [0.0] * n,
        ORACLE_SFT: [0.4] * n,
        "kto": [0.1 + 0.05 * (i % 3) for i in range(n)],
    }
    results = {name: result(values) for name, values in gold.items()}
    for res in results.values():
        res.metrics["paired"] = paired_comparison(res.samples, results["sft"].samples, gold_total)
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    section = append_headroom(report, results, prompts, ["kto"])
    assert report.read_text() == "# report\n" + section
    row = next(line for line in section.splitlines() if line.startswith("| kto"))
    assert "| 0.375 [" in row  # share 0.15 / 0.4
