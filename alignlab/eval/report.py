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
from collections.abc import Sequence
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
    """metrics["gold"]["total"] for "gold.total" (keys may themselves hold dots); None if absent."""
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
    for section in ("rewards", "gold"):
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


def format_value(value: Any, style: str = "pm", signed: bool = False) -> str:
    """An estimate as `mean ± half-width` (style "pm") or `mean [lo, hi]` ("interval", and
    always for an asymmetric interval such as a Wilson one, which ± would misstate), to two
    significant digits of the half-width (`interval_decimals`); `signed` for differences
    prints "+" on positive numbers."""
    if value is None:
        return "-"
    if _is_estimate(value):
        mean, lo, hi = value.get("mean"), value.get("lower"), value.get("upper")
        if lo is None or hi is None:
            return _fixed(mean, None, signed)
        decimals = interval_decimals((hi - lo) / 2)
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


def format_comparison(comparison: dict[str, Any] | None, part: str) -> str:
    """One cell of a paired comparison (`metrics["paired"]` or one of its families):
    "difference" `+0.038 [+0.012, +0.064]`, "bootstrap" `[+0.011, +0.063]`, "win_rate"
    `0.560 [0.514, 0.603]`, "separated" yes / no, "marked" the difference with a trailing
    `*` when separated."""
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
        decimals = interval_decimals((hi - lo) / 2)
        return f"[{_fixed(lo, decimals, True)}, {_fixed(hi, decimals, True)}]"
    if part == "win_rate":
        return format_value(comparison.get("win_rate"), "interval")
    cell = format_value(comparison.get("difference"), "interval", signed=True)
    return cell + " *" if part == "marked" and comparison.get("separated") else cell


def _cell(metrics: dict[str, Any], key: str, style: str) -> str:
    if key in PAIRED:
        return format_comparison(metrics.get("paired"), key.partition(".")[2])
    return format_value(lookup(metrics, key), style)


def _table(
    names: Sequence[str],
    all_metrics: Sequence[dict[str, Any]],
    keys: Sequence[str],
    style: str,
    labels: dict[str, str],
) -> tuple[list[str], list[list[str]]]:
    header = ["model", *(_label(k, all_metrics, labels) for k in keys)]
    rows = [[name, *(_cell(m, k, style) for k in keys)] for name, m in zip(names, all_metrics)]
    return header, rows


def _family_table(
    names: Sequence[str], all_metrics: Sequence[dict[str, Any]], style: str
) -> tuple[str, list[str], list[list[str]]] | None:
    """Per-family table of the scorer's "total" (or first key), when families exist."""
    if not any(m.get("gold_by_family") for m in all_metrics):
        return None
    gold_keys = [k for m in all_metrics for k in (m.get("gold") or {})]
    if not gold_keys:
        return None
    key = "total" if "total" in gold_keys else gold_keys[0]
    families: list[str] = []
    for m in all_metrics:
        families.extend(f for f in (m.get("gold_by_family") or {}) if f not in families)
    header = ["model", *families]
    rows = [
        [
            name,
            *(
                format_value(((m.get("gold_by_family") or {}).get(f) or {}).get(key), style)
                for f in families
            ),
        ]
        for name, m in zip(names, all_metrics)
    ]
    return key, header, rows


def _paired_family_table(
    names: Sequence[str], all_metrics: Sequence[dict[str, Any]]
) -> tuple[str, list[str], list[list[str]]] | None:
    """Per-family paired differences to the reference (`*`: separated), when any exist."""
    comparisons = [m.get("paired") or {} for m in all_metrics]
    families: list[str] = []
    for comparison in comparisons:
        families.extend(f for f in comparison.get("by_family") or {} if f not in families)
    if not families:
        return None
    by = next(c["by"] for c in comparisons if c.get("by_family"))
    rows = [
        [name, *(format_comparison((c.get("by_family") or {}).get(f), "marked") for f in families)]
        for name, c in zip(names, comparisons)
    ]
    return by, ["model", *families], rows


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
) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(5.0, 1.2 * len(keys) * max(1, len(names)) ** 0.5 + 2), 4))
    ax = figure.add_subplot()
    width = 0.8 / max(1, len(names))
    for j, (name, metrics) in enumerate(zip(names, all_metrics)):
        estimates = [(metrics.get(section) or {}).get(key) for section, key in keys]
        means, yerr = _err(estimates)
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(keys))]
        ax.bar(xs, means, width, yerr=yerr, capsize=3, label=name)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(
        [key if section == "gold" else f"{section}.{key}" for section, key in keys],
        rotation=30,
        ha="right",
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize="small")
    return figure_png(figure)


def _y_metric(all_metrics: Sequence[dict[str, Any]]) -> str | None:
    """The quality axis of the KL plot: gold.total, else the first numeric gold key, else the
    first reward."""
    gold = [
        (k, v) for m in all_metrics for k, v in (m.get("gold") or {}).items() if _is_estimate(v)
    ]
    if any(k == "total" for k, _ in gold):
        return "gold.total"
    numeric = [k for k, v in gold if v.get("method") == "t"]
    if numeric:
        return f"gold.{numeric[0]}"
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


def _plots(names: Sequence[str], all_metrics: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    plots: dict[str, bytes] = {}
    numeric: list[tuple[str, str]] = []
    rates: list[tuple[str, str]] = []
    for metrics in all_metrics:
        for key, value in (metrics.get("gold") or {}).items():
            target = rates if value.get("method") == "wilson" else numeric
            if ("gold", key) not in target:
                target.append(("gold", key))
        for key in metrics.get("rewards") or {}:
            if ("rewards", key) not in numeric:
                numeric.append(("rewards", key))
    if numeric:
        plots["components"] = _bar_chart(
            names, all_metrics, numeric, "Mean score per component (95% CI)", "mean"
        )
    if rates:
        plots["rates"] = _bar_chart(names, all_metrics, rates, "Rates (Wilson CI)", "rate")
    y_key = _y_metric(all_metrics)
    if y_key and any(_is_estimate(m.get("kl")) for m in all_metrics):
        plots["gold_vs_kl"] = _kl_scatter(names, all_metrics, y_key)
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
) -> dict[str, Path]:
    """Write the report of `results` ({model name: EvalResult, or its metrics dict}) to out_dir.

    Files: results.json ({title, models: {name: metrics}}), samples.jsonl (every scored
    response, the reference's once), report.md, report.html (self-contained: tables and
    plots embedded as base64 PNG) and plots/*.png: components.png (mean per numeric score
    with CI error bars per model), rates.png (boolean scores, Wilson CIs) and gold_vs_kl.png
    (quality vs KL with error bars on both axes) when the data for them exists.

    The table has a row per model and a column per key of `table_keys` (dotted paths into the
    metrics, e.g. "gold.total", "rewards.length"; default `default_table_keys`; a dict maps
    keys to column labels), then KL and, with a reference, the paired comparison
    (`metrics["paired"]`: Δ with its paired t interval, the bootstrap interval, the per-prompt
    win rate and whether Δ is separated from 0; else the per-sample win rate). Cells are
    `mean ± half-width` (style "pm"; asymmetric Wilson intervals still as `mean [lo, hi]`) or
    `mean [lo, hi]` ("interval"), to two significant digits of the half-width. A table of the
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
        tables.append((f"gold.{key} by family", f_header, f_rows))
    paired_family = _paired_family_table(names, all_metrics)
    if paired_family is not None:
        by, p_header, p_rows = paired_family
        tables.append((f"Δ {by} vs ref by family (paired t; * separated)", p_header, p_rows))
    if seeds:
        tables.append(_seed_table(seeds))
    plots = _plots(names, all_metrics)

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
    md += [" ".join(intro), "", _markdown_table(header, rows)]
    for table_title, t_header, t_rows in tables:
        md += [f"## {table_title}", "", _markdown_table(t_header, t_rows)]
    for name in plots:
        md += [f"![{name}](plots/{name}.png)", ""]
    paths["markdown"] = out / "report.md"
    atomic_write_text(paths["markdown"], "\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>"]
    if verdict:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in verdict)
        body.append(f'<section class="verdict"><h2>Verdict</h2><ul>{items}</ul></section>')
    body.append(f"<p>{html.escape(' '.join(intro))}</p>")
    body.append(_html_table(header, rows))
    for table_title, t_header, t_rows in tables:
        body += [f"<h2>{html.escape(table_title)}</h2>", _html_table(t_header, t_rows)]
    for name, data in plots.items():
        encoded = base64.b64encode(data).decode("ascii")
        body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">')
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    paths["html"] = out / "report.html"
    atomic_write_text(paths["html"], page)
    return paths
