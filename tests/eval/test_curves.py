"""Over-optimisation curves from metrics.jsonl: the summary finds the gold peak, the plot is written."""

import json

from alignlab.eval.curves import overoptimisation_summary, plot_curves
from alignlab.training.metrics import read_metrics


def _run(tmp_path, name, gold):
    folder = tmp_path / name
    folder.mkdir()
    rows = [
        {"step": 10 * (i + 1), "train/reward_mean": 0.1 * i, "train/gold_mean": g,
         "train/kl_ref": 0.5 * i}
        for i, g in enumerate(gold)
    ]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_summary_finds_the_gold_peak_and_flags_overoptimisation(tmp_path):
    hacked = read_metrics(_run(tmp_path, "hacked", [0.1, 0.3, 0.4, 0.2, 0.0]))
    summary = overoptimisation_summary(hacked)
    assert summary["gold_peak"] == 0.4 and summary["gold_peak_step"] == 30
    assert summary["proxy_end"] > summary["proxy_at_gold_peak"]
    assert summary["overoptimised"] == 1.0
    healthy = read_metrics(_run(tmp_path, "healthy", [0.1, 0.2, 0.3, 0.4, 0.5]))
    assert overoptimisation_summary(healthy)["overoptimised"] == 0.0


def test_plot_is_a_png(tmp_path):
    runs = {n: _run(tmp_path, n, [0.1, 0.3, 0.2]) for n in ("a", "b")}
    path = plot_curves(runs, tmp_path / "plots" / "curves.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
