"""Evaluation reports: results.json, samples.jsonl, a markdown table, PNG plots and one HTML page.

    paths = write_report({"sft": result_sft, "dpo": result_dpo}, "runs/report", "SFT vs DPO")

Every file is written atomically (the plots as one folder, `plots/`, replaced as a whole).
Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alignlab.eval.harness import EvalResult
from alignlab.fileio import atomic_folder, atomic_write_text, write_jsonl

ALWAYS_LAST = ("kl", "win_rate")
"""Appended to the table whenever a result has them (the win rate only without `PAIRED`)."""

PAIRED = ("paired.difference", "paired.bootstrap", "paired.win_rate", "paired.separated")
"""The columns of a paired comparison with the reference (`metrics["paired"]`), appended
after KL in place of the per-sample win rate whenever a result has one."""


def _metrics(result: EvalResult | dict[str, Any]) -> dict[str, Any]:
    return result.metrics if isinstance(result, EvalResult) else result


def lookup(metrics: dict[str, Any], key: str) -> Any:
    """metrics["scores"]["total"] for "scores.total" (keys may themselves hold dots); None if absent."""
    if key in metrics:
        return metrics[key]
    for i, char in enumerate(key):
        if char == "." and isinstance(metrics.get(key[:i]), dict):
            found = lookup(metrics[key[:i]], key[i + 1 :])
            if found is not None:
                return found
    return None


def _is_estimate(value: Any) -> bool:
    return isinstance(value, dict) and "mean" in value


def default_table_keys(all_metrics: Sequence[dict[str, Any]]) -> list[str]:
    """length, finished, distinct-1/2, every reward fn, every scorer key (first seen order)."""
    keys = ["length", "finished", "distinct_1", "distinct_2"]
    for section in ("rewards", "scores"):
        for metrics in all_metrics:
            for name in metrics.get(section, {}) or {}:
                key = f"{section}.{name}"
                if key not in keys:
                    keys.append(key)
    return keys


def _with_last(keys: Sequence[str], all_metrics: Sequence[dict[str, Any]]) -> list[str]:
    out = list(keys)
    paired = any(m.get("paired") for m in all_metrics)
    for key in ALWAYS_LAST:
        if key == "win_rate" and paired:
            continue
        if key not in out and any(lookup(m, key) is not None for m in all_metrics):
            out.append(key)
    if paired:
        out += [key for key in PAIRED if key not in out]
    return out


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    x = float(x)
    if abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.3f}"


def interval_decimals(half_width: Any) -> int | None:
    """Decimals that show two significant digits of `half_width` (0.047 -> 3, 0.12 -> 2,
    4.5 -> 1, 45 -> 0, at most 6): further digits of the estimate are noise. None when there
    is no positive finite half-width."""
    if half_width is None or not math.isfinite(half_width) or half_width <= 0:
        return None
    return min(6, max(0, 1 - math.floor(math.log10(half_width))))


def _fixed(x: Any, decimals: int | None, signed: bool = False) -> str:
    if decimals is None:
        text = _num(x)
        return f"+{text}" if signed and text != "n/a" and float(x) > 0 else text
    return f"{float(x):{'+' if signed else ''}.{decimals}f}"


def format_value(
    value: Any, style: str = "pm", signed: bool = False, decimals: int | None = None
) -> str:
    """An estimate as `mean ± half-width` (style "pm") or `mean [lo, hi]` ("interval", and
    always for an asymmetric interval such as a Wilson one, which ± would misstate), to two
    significant digits of the half-width (`interval_decimals`); `signed` for differences
    prints "+" on positive numbers. `decimals` is for an estimate without an interval of its
    own (none, or of zero width: the oracle, a model against itself), e.g. those of the other
    cells of its column; without it such an estimate prints three."""
    if value is None:
        return "-"
    if _is_estimate(value):
        mean, lo, hi = value.get("mean"), value.get("lower"), value.get("upper")
        if lo is None or hi is None:
            return _fixed(mean, decimals, signed) if mean is not None else "n/a"
        own = interval_decimals((hi - lo) / 2)
        decimals = own if own is not None else decimals
        symmetric = abs((hi - mean) - (mean - lo)) <= 1e-9 * max(1.0, abs(hi), abs(lo))
        if style == "interval" or not symmetric:
            bounds = f"[{_fixed(lo, decimals, signed)}, {_fixed(hi, decimals, signed)}]"
            return f"{_fixed(mean, decimals, signed)} {bounds}"
        return f"{_fixed(mean, decimals, signed)} ± {_fixed((hi - lo) / 2, decimals)}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return _num(value)
    return str(value)


def _label(key: str, all_metrics: Sequence[dict[str, Any]], labels: dict[str, str]) -> str:
    if key in labels:
        return labels[key]
    if key == "kl":
        return "KL to ref"
    if key == "win_rate":
        by = next((m["win_rate"].get("by") for m in all_metrics if m.get("win_rate")), None)
        return f"win rate vs ref ({by})" if by else "win rate vs ref"
    if key in PAIRED:
        by = next((m["paired"].get("by") for m in all_metrics if m.get("paired")), None)
        return {
            "paired.difference": f"Δ {by or 'score'} vs ref (paired t)",
            "paired.bootstrap": "Δ bootstrap",
            "paired.win_rate": "win rate vs ref (per prompt, Wilson)",
            "paired.separated": "separated",
        }[key]
    return key


def format_comparison(
    comparison: dict[str, Any] | None, part: str, decimals: int | None = None
) -> str:
    """One cell of a paired comparison (`metrics["paired"]` or one of its families):
    "difference" `+0.038 [+0.012, +0.064]`, "bootstrap" `[+0.011, +0.063]`, "win_rate"
    `0.560 [0.514, 0.603]`, "separated" yes / no, "marked" the difference with a trailing
    `*` when separated. `decimals` as in `format_value`, for an interval of zero width."""
    if not comparison:
        return "-"
    if part == "separated":
        return "yes" if comparison.get("separated") else "no"
    if part == "bootstrap":
        lo, hi = (
            (comparison.get("bootstrap") or {}).get("lower"),
            (comparison.get("bootstrap") or {}).get("upper"),
        )
        if lo is None or hi is None:
            return "n/a"
        own = interval_decimals((hi - lo) / 2)
        decimals = own if own is not None else decimals
        return f"[{_fixed(lo, decimals, True)}, {_fixed(hi, decimals, True)}]"
    if part == "win_rate":
        return format_value(comparison.get("win_rate"), "interval", decimals=decimals)
    cell = format_value(comparison.get("difference"), "interval", signed=True, decimals=decimals)
    return cell + " *" if part == "marked" and comparison.get("separated") else cell


def column_decimals(estimates: Sequence[Any]) -> int | None:
    """The most decimals any estimate of a column shows (`interval_decimals` of its interval),
    for the column's estimates that have none; None when no estimate has an interval."""
    found = [
        interval_decimals((e["upper"] - e["lower"]) / 2)
        for e in estimates
        if _is_estimate(e) and e.get("lower") is not None and e.get("upper") is not None
    ]
    found = [d for d in found if d is not None]
    return max(found) if found else None


def _column(all_metrics: Sequence[dict[str, Any]], key: str, style: str) -> list[str]:
    if key in PAIRED:
        part = key.partition(".")[2]
        parts = [(m.get("paired") or {}).get(part) for m in all_metrics]
        decimals = column_decimals(parts)
        return [format_comparison(m.get("paired"), part, decimals) for m in all_metrics]
    values = [lookup(m, key) for m in all_metrics]
    decimals = column_decimals(values)
    return [format_value(value, style, decimals=decimals) for value in values]


def _table(
    names: Sequence[str],
    all_metrics: Sequence[dict[str, Any]],
    keys: Sequence[str],
    style: str,
    labels: dict[str, str],
) -> tuple[list[str], list[list[str]]]:
    header = ["model", *(_label(k, all_metrics, labels) for k in keys)]
    columns = [_column(all_metrics, key, style) for key in keys]
    rows = [[name, *(column[i] for column in columns)] for i, name in enumerate(names)]
    return header, rows


def left_out_families(all_metrics: Sequence[dict[str, Any]]) -> list[str]:
    """Families a result leaves out of its headline (`metrics["headline"]["left_out"]`, as the
    lab's evaluation records them): still in the per-family tables, marked there."""
    return _in_first_seen_order((m.get("headline") or {}).get("left_out") for m in all_metrics)


def _in_first_seen_order(groups: Iterable[Iterable[str] | None]) -> list[str]:
    """Every name of `groups` (family lists, or mappings keyed by family) once, in the order
    first seen; a None group is empty."""
    return list(dict.fromkeys(name for group in groups for name in group or ()))


def _family_header(family: str, left_out: Sequence[str]) -> str:
    return f"{family} (not in headline)" if family in left_out else family


def _family_table(
    names: Sequence[str], all_metrics: Sequence[dict[str, Any]], style: str
) -> tuple[str, list[str], list[list[str]]] | None:
    """Per-family table of the scorer's first numeric key (else its first), when families
    exist."""
    if not any(m.get("scores_by_family") for m in all_metrics):
        return None
    key = _first_score_key(all_metrics)
    if key is None:
        return None
    families = _in_first_seen_order(m.get("scores_by_family") for m in all_metrics)
    left_out = left_out_families(all_metrics)
    header = ["model", *(_family_header(f, left_out) for f in families)]
    columns = []
    for family in families:
        values = [
            ((m.get("scores_by_family") or {}).get(family) or {}).get(key) for m in all_metrics
        ]
        decimals = column_decimals(values)
        columns.append([format_value(v, style, decimals=decimals) for v in values])
    rows = [[name, *(column[i] for column in columns)] for i, name in enumerate(names)]
    return key, header, rows


def _paired_family_table(
    names: Sequence[str], all_metrics: Sequence[dict[str, Any]]
) -> tuple[str, list[str], list[list[str]]] | None:
    """Per-family paired differences to the reference (`*`: separated), when any exist."""
    comparisons = [m.get("paired") or {} for m in all_metrics]
    families = _in_first_seen_order(c.get("by_family") for c in comparisons)
    if not families:
        return None
    by = next(c["by"] for c in comparisons if c.get("by_family"))
    columns = []
    for family in families:
        cells = [(c.get("by_family") or {}).get(family) for c in comparisons]
        decimals = column_decimals([(cell or {}).get("difference") for cell in cells])
        columns.append([format_comparison(cell, "marked", decimals) for cell in cells])
    rows = [[name, *(column[i] for column in columns)] for i, name in enumerate(names)]
    left_out = left_out_families(all_metrics)
    return by, ["model", *(_family_header(f, left_out) for f in families)], rows


def _seed_table(seeds: dict[str, dict[str, Any]]) -> tuple[str, list[str], list[list[str]]]:
    """One row per model of `alignlab.eval.paired.combine_seeds`: the mean paired difference
    over seeds with its t interval over seeds, and each seed's difference."""
    first = next(iter(seeds.values()))
    header = ["model", f"Δ {first['by']} vs ref over seeds (t)", "separated", "per seed (paired t)"]
    rows = [
        [
            name,
            format_value(spread["across_seeds"], "interval", signed=True),
            "yes" if spread["separated"] else "no",
            "; ".join(format_value(e, "interval", signed=True) for e in spread["per_seed"]),
        ]
        for name, spread in seeds.items()
    ]
    n_seeds = max(spread["n_seeds"] for spread in seeds.values())
    return f"{n_seeds} training seeds", header, rows


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(
    results: dict[str, EvalResult | dict[str, Any]],
    table_keys: Sequence[str] | dict[str, str] | None = None,
    style: str = "pm",
) -> str:
    """The report's main table as markdown: one row per model.

    `table_keys` may map each key to its column label."""
    names = list(results)
    all_metrics = [_metrics(r) for r in results.values()]
    keys = _with_last(list(table_keys or default_table_keys(all_metrics)), all_metrics)
    labels = dict(table_keys) if isinstance(table_keys, dict) else {}
    return _markdown_table(*_table(names, all_metrics, keys, style, labels))


# --- plots ---


def _err(estimates: Sequence[dict[str, Any] | None]) -> tuple[list[float], list[list[float]]]:
    means, lows, highs = [], [], []
    for est in estimates:
        mean = est.get("mean") if est else None
        mean = math.nan if mean is None else float(mean)
        lo, hi = (est or {}).get("lower"), (est or {}).get("upper")
        means.append(mean)
        lows.append(0.0 if lo is None or math.isnan(mean) else max(0.0, mean - lo))
        highs.append(0.0 if hi is None or math.isnan(mean) else max(0.0, hi - mean))
    return means, [lows, highs]


def figure_png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _bar_chart(
    names: Sequence[str],
    all_metrics: Sequence[dict[str, Any]],
    keys: Sequence[tuple[str, str]],
    title: str,
    ylabel: str,
    ceiling: str | None = None,
) -> bytes:
    """Bars per key and model with their intervals; the `ceiling` model (the oracle) as a
    dashed line over each group, not a bar that dwarfs the others."""
    from matplotlib.figure import Figure

    bars = [(n, m) for n, m in zip(names, all_metrics) if n != ceiling]
    figure = Figure(figsize=(max(5.0, 1.2 * len(keys) * max(1, len(bars)) ** 0.5 + 2), 4))
    ax = figure.add_subplot()
    width = 0.8 / max(1, len(bars))
    for j, (name, metrics) in enumerate(bars):
        estimates = [(metrics.get(section) or {}).get(key) for section, key in keys]
        means, yerr = _err(estimates)
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(keys))]
        ax.bar(xs, means, width, yerr=yerr, capsize=3, label=name)
    for name, metrics in zip(names, all_metrics):
        if name != ceiling:
            continue
        means, _ = _err([(metrics.get(section) or {}).get(key) for section, key in keys])
        for i, mean in enumerate(means):
            ax.hlines(mean, i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                      label=name if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(
        [key if section == "scores" else f"{section}.{key}" for section, key in keys],
        rotation=30,
        ha="right",
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize="small")
    return figure_png(figure)


def _first_score_key(
    all_metrics: Sequence[dict[str, Any]], numeric_only: bool = False
) -> str | None:
    """The scorer's first numeric key (a mean, not a rate: the harness ranks by the same one
    when no `EvalOptions.primary` is given), else its first key unless `numeric_only`."""
    estimates = [
        (k, v) for m in all_metrics for k, v in (m.get("scores") or {}).items() if _is_estimate(v)
    ]
    numeric = [k for k, v in estimates if v.get("method") == "t"]
    if numeric:
        return numeric[0]
    return estimates[0][0] if estimates and not numeric_only else None


def _y_metric(all_metrics: Sequence[dict[str, Any]]) -> str | None:
    """The quality axis of the KL plot: the scorer's first numeric key, else the first reward."""
    key = _first_score_key(all_metrics, numeric_only=True)
    if key is not None:
        return f"scores.{key}"
    rewards = [k for m in all_metrics for k in (m.get("rewards") or {})]
    return f"rewards.{rewards[0]}" if rewards else None


def _kl_scatter(names: Sequence[str], all_metrics: Sequence[dict[str, Any]], y_key: str) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4))
    ax = figure.add_subplot()
    for name, metrics in zip(names, all_metrics):
        kl, y = metrics.get("kl"), lookup(metrics, y_key)
        if not _is_estimate(kl) or not _is_estimate(y):
            continue
        (x_mean,), xerr = _err([kl])
        (y_mean,), yerr = _err([y])
        ax.errorbar([x_mean], [y_mean], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=name)
        ax.annotate(name, (x_mean, y_mean), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("KL(model ‖ ref) (nats per response)")
    ax.set_ylabel(y_key)
    ax.set_title(f"{y_key} vs KL to the reference")
    ax.legend(fontsize="small")
    return figure_png(figure)


def _is_the_baseline(metrics: dict[str, Any]) -> bool:
    """The model compared with itself: its folder is the paired comparison's baseline."""
    paired = metrics.get("paired") or {}
    return bool(paired) and str(metrics.get("model")) == str(paired.get("baseline"))


def paired_figure(
    names: Sequence[str], all_metrics: Sequence[dict[str, Any]], ceiling: str | None = None
) -> Any:
    """Each model's paired difference to the reference, overall and per family, as a point
    with its paired t interval around a zero line. The `ceiling` model (the oracle) does not
    set the axis: its differences, far larger, are marked at the top edge with their values
    when they fall outside it. A matplotlib Figure; None when no model but the reference has
    a comparison."""
    from matplotlib.figure import Figure

    compared = [
        (name, m["paired"])
        for name, m in zip(names, all_metrics)
        if m.get("paired") and not _is_the_baseline(m)
    ]
    models = [(name, c) for name, c in compared if name != ceiling]
    if not models:
        return None
    families = _in_first_seen_order(c.get("by_family") for _, c in compared)
    left_out = left_out_families(all_metrics)
    by = models[0][1].get("by") or "score"
    labels = ["overall" if not left_out else f"headline {by}"]
    labels += [f"{f}\n(not in headline)" if f in left_out else f for f in families]

    def estimates(comparison: dict[str, Any]) -> list[dict[str, Any] | None]:
        by_family = comparison.get("by_family") or {}
        picked = [comparison.get("difference")]
        return picked + [(by_family.get(f) or {}).get("difference") for f in families]

    figure = Figure(figsize=(max(6.0, 1.1 * len(labels) + 2.5), 4.2))
    ax = figure.add_subplot()
    ax.axhline(0, color="black", linewidth=0.8)
    width = 0.7 / len(models)
    extremes = [0.0]
    for j, (name, comparison) in enumerate(models):
        means, yerr = _err(estimates(comparison))
        xs = [i - 0.35 + width * (j + 0.5) for i in range(len(labels))]
        ax.errorbar(xs, means, yerr=yerr, fmt="o", capsize=3, label=name)
        extremes += [m - lo for m, lo in zip(means, yerr[0]) if math.isfinite(m)]
        extremes += [m + hi for m, hi in zip(means, yerr[1]) if math.isfinite(m)]
    bottom, top = min(extremes), max(extremes)
    pad = 0.15 * (top - bottom or 1.0)
    ax.set_ylim(bottom - pad, top + 2.5 * pad)  # room above for the ceiling's markers
    for name, comparison in compared:
        if name != ceiling:
            continue
        means, _ = _err(estimates(comparison))
        for i, mean in enumerate(means):
            if not math.isfinite(mean):
                continue
            outside = not bottom - pad <= mean <= top + 2.5 * pad
            shown = top + 1.8 * pad if outside else mean
            ax.plot([i], [shown], marker="^" if outside else "_", markersize=12,
                    color="black", linestyle="none", label=name if i == 0 else None)  # fmt: skip
            if outside:
                ax.annotate(f"{mean:+.2f}", (i, shown), textcoords="offset points",
                            xytext=(12, -4), fontsize="small")  # fmt: skip
    baseline = next(
        (n for n, m in zip(names, all_metrics) if _is_the_baseline(m)),
        models[0][1].get("baseline") or "the reference",
    )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize="small")
    ax.set_ylabel(f"Δ {by} vs reference (paired)")
    ax.set_title(f"Paired difference to {baseline} (95% t intervals)")
    ax.legend(fontsize="small")
    return figure


def _plots(
    names: Sequence[str], all_metrics: Sequence[dict[str, Any]], ceiling: str | None = None
) -> dict[str, bytes]:
    plots: dict[str, bytes] = {}
    differences = paired_figure(names, all_metrics, ceiling)
    if differences is not None:
        plots["paired_differences"] = figure_png(differences)
    numeric: list[tuple[str, str]] = []
    rates: list[tuple[str, str]] = []
    for metrics in all_metrics:
        for key, value in (metrics.get("scores") or {}).items():
            target = rates if value.get("method") == "wilson" else numeric
            if ("scores", key) not in target:
                target.append(("scores", key))
        for key in metrics.get("rewards") or {}:
            if ("rewards", key) not in numeric:
                numeric.append(("rewards", key))
    if numeric:
        plots["components"] = _bar_chart(
            names, all_metrics, numeric, "Mean score per component (95% CI)", "mean", ceiling
        )
    if rates:
        plots["rates"] = _bar_chart(names, all_metrics, rates, "Rates (Wilson CI)", "rate", ceiling)
    y_key = _y_metric(all_metrics)
    if y_key and any(_is_estimate(m.get("kl")) for m in all_metrics):
        plots["score_vs_kl"] = _kl_scatter(names, all_metrics, y_key)
    return plots


# --- the report ---


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}"
    "img{max-width:100%;margin:1em 0;display:block}"
)


def _sample_rows(results: dict[str, EvalResult | dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    written_refs: set[int] = set()
    for name, result in results.items():
        if not isinstance(result, EvalResult):
            continue
        rows += [{"model": name, "role": "model", **s.to_dict()} for s in result.samples]
        if result.ref_samples and id(result.ref_samples) not in written_refs:
            written_refs.add(id(result.ref_samples))
            ref = result.metrics.get("ref") or "reference"
            rows += [{"model": ref, "role": "reference", **s.to_dict()} for s in result.ref_samples]
    return rows


def write_report(
    results: dict[str, EvalResult | dict[str, Any]],
    out_dir: str | Path,
    title: str = "Evaluation",
    table_keys: Sequence[str] | dict[str, str] | None = None,
    style: str = "pm",
    seeds: dict[str, dict[str, Any]] | None = None,
    verdict: Sequence[str] = (),
    ceiling: str | None = "oracle",
) -> dict[str, Path]:
    """Write the report of `results` ({model name: EvalResult, or its metrics dict}) to out_dir.

    Files: results.json ({title, models: {name: metrics}}), samples.jsonl (every scored
    response, the reference's once), report.md, report.html (self-contained: tables and
    plots embedded as base64 PNG) and plots/*.png: paired_differences.png (each model's
    paired difference to the reference, overall and per family, with its t interval and a
    zero line), components.png (mean per numeric score with CI error bars per model),
    rates.png (boolean scores, Wilson CIs) and score_vs_kl.png (quality vs KL with error bars
    on both axes) when the data for them exists. The `ceiling` result (default "oracle",
    when present) is drawn as a line or marker in the plots, never as a bar, and does not set
    the axis of the differences.

    Both pages open with the `verdict` lines (e.g. `alignlab.eval.verdict.verdict`), then the
    plot of the paired differences, then the tables and the other plots. Families a result
    leaves out of its headline (`metrics["headline"]["left_out"]`) are marked "not in
    headline" in the per-family tables and the differences plot.

    The table has a row per model and a column per key of `table_keys` (dotted paths into the
    metrics, e.g. "scores.total", "rewards.length"; default `default_table_keys`; a dict maps
    keys to column labels), then KL and, with a reference, the paired comparison
    (`metrics["paired"]`: Δ with its paired t interval, the bootstrap interval, the per-prompt
    win rate and whether Δ is separated from 0; else the per-sample win rate). Cells are
    `mean ± half-width` (style "pm"; asymmetric Wilson intervals still as `mean [lo, hi]`) or
    `mean [lo, hi]` ("interval"), to two significant digits of the half-width (an estimate
    without an interval, the oracle's, to the decimals of its column). A table of the
    paired differences per family follows the family table. `seeds` (from
    `alignlab.eval.paired.combine_seeds`) adds a table of the differences over training seeds.
    Returns {"json", "samples", "markdown", "html", "plot_<name>": path}.
    """
    if not results:
        raise ValueError("write_report needs at least one result")
    if style not in ("pm", "interval"):
        raise ValueError(f"style must be 'pm' or 'interval', got {style!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(results)
    all_metrics = [_metrics(r) for r in results.values()]
    keys = _with_last(list(table_keys or default_table_keys(all_metrics)), all_metrics)
    labels = dict(table_keys) if isinstance(table_keys, dict) else {}
    header, rows = _table(names, all_metrics, keys, style, labels)
    family = _family_table(names, all_metrics, style)
    tables = []  # (title, header, rows) after the main table
    if family is not None:
        key, f_header, f_rows = family
        tables.append((f"scores.{key} by family", f_header, f_rows))
    paired_family = _paired_family_table(names, all_metrics)
    if paired_family is not None:
        by, p_header, p_rows = paired_family
        tables.append((f"Δ {by} vs ref by family (paired t; * separated)", p_header, p_rows))
    if seeds:
        tables.append(_seed_table(seeds))
    plots = _plots(names, all_metrics, ceiling if ceiling in results else None)

    paths: dict[str, Path] = {}
    with atomic_folder(out / "plots") as tmp:
        for name, data in plots.items():
            (tmp / f"{name}.png").write_bytes(data)
    for name in plots:
        paths[f"plot_{name}"] = out / "plots" / f"{name}.png"

    payload = {"title": title, "models": dict(zip(names, all_metrics))}
    paths["json"] = out / "results.json"
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    paths["samples"] = out / "samples.jsonl"
    write_jsonl(paths["samples"], _sample_rows(results))

    settings = all_metrics[0].get("settings") or {}
    settings_line = ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
    ref = next((m.get("ref") for m in all_metrics if m.get("ref")), None)
    intro = []
    if ref:
        intro.append(f"Reference: `{ref}`.")
    if settings_line:
        intro.append(f"Sampling: {settings_line}.")
    intro.append(
        "Means with Student-t 95% intervals, rates with Wilson intervals; "
        "KL is the Monte Carlo estimate from the model's own samples."
    )
    if any(m.get("paired") for m in all_metrics):
        intro.append(
            "Δ: the mean per-prompt difference to the reference on the same prompts and "
            "sampling seeds, with its paired t interval and a paired (BCa) bootstrap interval; "
            "win rate: prompts where the model scores higher, ties half; separated: both "
            "intervals exclude 0."
        )

    md = [f"# {title}", ""]
    if verdict:
        md += ["**Verdict**", "", *(f"- {line}" for line in verdict), ""]
    first_plots = [name for name in plots if name == "paired_differences"]
    other_plots = [name for name in plots if name not in first_plots]
    md += [f"![{name}](plots/{name}.png)\n" for name in first_plots]
    md += [" ".join(intro), "", _markdown_table(header, rows)]
    for table_title, t_header, t_rows in tables:
        md += [f"## {table_title}", "", _markdown_table(t_header, t_rows)]
    for name in other_plots:
        md += [f"![{name}](plots/{name}.png)", ""]
    paths["markdown"] = out / "report.md"
    atomic_write_text(paths["markdown"], "\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>"]
    if verdict:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in verdict)
        body.append(f'<section class="verdict"><h2>Verdict</h2><ul>{items}</ul></section>')

    def image(name: str) -> str:
        encoded = base64.b64encode(plots[name]).decode("ascii")
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'

    body += [image(name) for name in first_plots]
    body.append(f"<p>{html.escape(' '.join(intro))}</p>")
    body.append(_html_table(header, rows))
    for table_title, t_header, t_rows in tables:
        body += [f"<h2>{html.escape(table_title)}</h2>", _html_table(t_header, t_rows)]
    body += [image(name) for name in other_plots]
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    paths["html"] = out / "report.html"
    atomic_write_text(paths["html"], page)
    return paths
