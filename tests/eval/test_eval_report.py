"""write_report(): results.json, samples.jsonl, report.md, report.html and valid PNGs."""

import base64
import json

import pytest

from alignlab.eval.harness import EvalOptions, EvalPrompt, evaluate_many
from alignlab.eval.paired import combine_seeds
from alignlab.eval.report import (
    format_comparison,
    format_value,
    interval_decimals,
    markdown_table,
    write_report,
)
from alignlab.models.tiny import build_tiny_model, tiny_llama_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = [
    EvalPrompt("What is 1 plus 2?", {"family": "math"}),
    EvalPrompt([{"role": "user", "content": "alpha beta"}], {"family": "chat"}),
    EvalPrompt("the capital of", {"family": "chat"}),
]


def gold(prompt, response):
    return {
        "total": float(len(response) % 5),
        "helpful": len(response.split()) / 3,
        "refused": "sorry" in response,
    }


@pytest.fixture(scope="module")
def results(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    other = tmp_path_factory.mktemp("other") / "other|model"
    config = tiny_llama_config(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4)
    build_tiny_model(other, tiny_tokenizer, config, seed=5)
    return evaluate_many(
        {"base": tiny_model_dir, "other|seed5": other},
        PROMPTS,
        ref_dir=tiny_model_dir,
        scorer=gold,
        reward_fns={"chars": lambda p, r: float(len(r))},
        options=EvalOptions(num_samples=2, max_new_tokens=6, primary="total"),
    )


def test_report_files(results, tmp_path):
    paths = write_report(results, tmp_path / "report", "Tiny <report>")
    expected = {
        "json",
        "samples",
        "markdown",
        "html",
        "plot_paired_differences",
        "plot_components",
        "plot_rates",
        "plot_score_vs_kl",
    }
    assert set(paths) == expected
    for key in expected:
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    for key in ("plot_paired_differences", "plot_components", "plot_rates", "plot_score_vs_kl"):
        assert paths[key].read_bytes().startswith(PNG_MAGIC)

    data = json.loads(paths["json"].read_text())
    assert data["title"] == "Tiny <report>"
    assert set(data["models"]) == {"base", "other|seed5"}
    assert data["models"]["base"]["kl"]["mean"] == 0.0

    md = paths["markdown"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    header = rows[0]
    for column in (
        "length",
        "finished",
        "distinct_1",
        "rewards.chars",
        "scores.total",
        "scores.refused",
        "KL to ref",
        "Δ scores.total vs ref (paired t)",
        "Δ bootstrap",
        "win rate vs ref (per prompt, Wilson)",
        "separated",
    ):
        assert column in header
    assert "win rate vs ref (scores.total)" not in header  # the per-prompt one replaces it
    assert any(r.startswith("| base | ") for r in rows)
    assert any(r.startswith("| other\\|seed5 | ") for r in rows)  # pipe escaped
    base_row = next(r for r in rows if r.startswith("| base | "))
    # KL of the reference against itself: 0 without an interval, to its column's decimals
    other = results["other|seed5"].metrics
    kl_decimals = interval_decimals((other["kl"]["upper"] - other["kl"]["lower"]) / 2)
    assert f"| {0:.{kl_decimals}f} ± {0:.{kl_decimals}f} |" in base_row
    assert "## scores.total by family" in md and "| chat | math |" in md
    # the reference against itself (same prompts and seeds): Δ exactly 0, not separated
    d = other["paired"]["difference"]
    zero = f"{0:+.{interval_decimals((d['upper'] - d['lower']) / 2)}f}"
    assert f"| {zero} [{zero}, {zero}] |" in base_row and base_row.endswith("| no |")
    assert "## Δ scores.total vs ref by family (paired t; * separated)" in md
    assert "same prompts and sampling seeds" in md

    html_text = paths["html"].read_text()
    assert "<table>" in html_text and "Tiny &lt;report&gt;" in html_text
    images = html_text.split('src="data:image/png;base64,')[1:]
    assert len(images) == 4
    assert base64.b64decode(images[0].split('"')[0]).startswith(PNG_MAGIC)

    samples = [json.loads(line) for line in paths["samples"].read_text().splitlines()]
    roles = [s["role"] for s in samples]
    assert roles.count("model") == 12 and roles.count("reference") == 6  # reference once


def test_table_keys_and_interval_style(results, tmp_path):
    table = markdown_table(results, table_keys=["scores.helpful"], style="interval")
    header = table.splitlines()[0]
    assert header.startswith("| model | scores.helpful | KL to ref | Δ scores.total vs ref")
    assert "[" in table.splitlines()[2]
    # rewriting replaces the plots folder and reuses metrics dicts
    metrics_only = {name: r.metrics for name, r in results.items()}
    paths = write_report(metrics_only, tmp_path, "again", table_keys=["length"])
    # main, family and paired family tables
    assert paths["markdown"].read_text().count("| base |") == 3


def test_format_value():
    est = {"mean": 1.0, "lower": 0.5, "upper": 1.5}
    assert format_value(est) == "1.00 ± 0.50"  # two significant digits of the half-width
    assert format_value(est, "interval") == "1.00 [0.50, 1.50]"
    assert format_value({"mean": 0.2951, "lower": 0.2481, "upper": 0.3421}) == "0.295 ± 0.047"
    assert format_value({"mean": 123.4, "lower": 78.4, "upper": 168.4}) == "123 ± 45"
    assert format_value({"mean": 2.0, "lower": None, "upper": None}) == "2.000"
    wilson = {"mean": 0.0, "lower": 0.0, "upper": 0.24}  # asymmetric: never as ±
    assert format_value(wilson) == "0.00 [0.00, 0.24]"
    assert format_value({"mean": 0.0, "lower": 0.0, "upper": 0.0}) == "0.000 ± 0.000"
    assert format_value(None) == "-" and format_value(0.25) == "0.250"
    diff = {"mean": 0.04, "lower": 0.021, "upper": 0.059}
    assert format_value(diff, "interval", signed=True) == "+0.040 [+0.021, +0.059]"
    assert (interval_decimals(0.047), interval_decimals(0.12), interval_decimals(4.5)) == (3, 2, 1)
    assert interval_decimals(0.0) is None and interval_decimals(1e-9) == 6


def test_format_comparison():
    comparison = {
        "difference": {"mean": 0.04, "lower": 0.021, "upper": 0.059},
        "bootstrap": {"mean": 0.04, "lower": 0.0192, "upper": 0.0613},
        "win_rate": {"mean": 0.56, "lower": 0.514, "upper": 0.603},
        "separated": True,
    }
    assert format_comparison(comparison, "difference") == "+0.040 [+0.021, +0.059]"
    assert format_comparison(comparison, "marked") == "+0.040 [+0.021, +0.059] *"
    assert format_comparison(comparison, "bootstrap") == "[+0.019, +0.061]"
    assert format_comparison(comparison, "win_rate") == "0.560 [0.514, 0.603]"
    assert format_comparison(comparison, "separated") == "yes"
    apart = dict(
        comparison, separated=False, difference={"mean": -0.01, "lower": -0.05, "upper": 0.03}
    )
    assert format_comparison(apart, "marked") == "-0.010 [-0.050, +0.030]"
    assert format_comparison(None, "difference") == "-"


def test_seed_table(results, tmp_path):
    """Three "seeds" of the same evaluation: the report's seed table lists each model's mean
    difference over seeds and the per-seed values."""
    runs = [{name: r.metrics for name, r in results.items()} for _ in range(3)]
    seeds = combine_seeds(runs)
    paths = write_report(results, tmp_path, "seeds", seeds=seeds)
    md = paths["markdown"].read_text()
    assert "## 3 training seeds" in md
    row = next(
        line for line in md.splitlines() if line.startswith("| other\\|seed5 |") and "; " in line
    )
    assert row.count("; ") == 2


def test_report_opens_with_the_verdict_and_the_paired_differences(tmp_path):
    from synthetic_reports import synthetic_results

    results = synthetic_results()
    lines = ["DPO beats SFT by +0.050 [+0.036, +0.064] gold on 40 prompts (paired).", "x < y"]
    paths = write_report(
        results, tmp_path, "t", table_keys=["headline.scores.total"], verdict=lines
    )
    md = paths["markdown"].read_text()
    assert md.startswith("# t\n\n**Verdict**\n\n- DPO beats SFT by +0.050")
    order = [md.index(s) for s in ("**Verdict**", "plots/paired_differences.png", "| model |")]
    assert order == sorted(order)  # verdict, then the differences plot, then the tables
    page = paths["html"].read_text()
    order = [page.index(s) for s in ("<h2>Verdict</h2>", 'alt="paired_differences"', "<table>")]
    assert order == sorted(order) and "<li>x &lt; y</li>" in page
    assert paths["plot_paired_differences"].read_bytes().startswith(PNG_MAGIC)
    # the left-out family stays in both per-family tables, marked
    assert md.count("| arithmetic (not in headline) |") == 2
    assert "verdict" not in write_report(results, tmp_path / "plain", "t")["markdown"].read_text()


def test_the_oracle_does_not_set_the_axis_of_the_differences():
    from synthetic_reports import synthetic_results

    from alignlab.eval.report import paired_figure

    results = synthetic_results()
    names, metrics = list(results), list(results.values())
    ax = paired_figure(names, metrics, ceiling="oracle").axes[0]
    oracle_gap = results["oracle"]["paired"]["difference"]["lower"]
    upper = max(m["paired"]["difference"]["upper"] for n, m in results.items() if n != "oracle")
    low, high = ax.get_ylim()
    assert low < 0 < upper < high < oracle_gap  # zero and every model's interval in view
    labels = [line.get_label() for line in ax.get_lines()]
    assert "oracle" in labels  # a marker, inside the axis
    assert all(low <= y <= high for line in ax.get_lines() for y in line.get_ydata())
    # the reference is not plotted against itself; without a ceiling the oracle sets the axis
    assert {"dpo", "ppo"} <= set(ax.get_legend_handles_labels()[1]) and "sft" not in labels
    assert paired_figure(names, metrics, ceiling=None).axes[0].get_ylim()[1] > oracle_gap
    assert paired_figure(["sft"], [results["sft"]]) is None


def test_an_estimate_without_interval_takes_its_column_decimals():
    from alignlab.eval.report import column_decimals

    exact = {"mean": 1.0, "lower": 1.0, "upper": 1.0}  # the oracle: no spread
    column = [exact, {"mean": 0.25, "lower": 0.13, "upper": 0.37}, None]
    assert column_decimals(column) == 2
    assert format_value(exact, decimals=column_decimals(column)) == "1.00 ± 0.00"
    assert format_value(exact) == "1.000 ± 0.000"  # alone: three decimals, as before
    assert column_decimals([exact, None]) is None
