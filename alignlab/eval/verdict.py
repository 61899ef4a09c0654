"""The verdict of a paired evaluation: what its comparisons with the reference establish.

    lines = verdict({"DPO": metrics["paired"], "PPO": ...}, "SFT", "gold", "heldout prompts")
    # DPO beats SFT by +0.041 [+0.015, +0.067] gold on 452 heldout prompts (paired).
    # PPO vs SFT: +0.012 [-0.014, +0.038] gold on 452 heldout prompts, not separated.

A claim is made only where the paired difference is separated from 0 (both its paired t and
its paired bootstrap interval exclude 0, `alignlab.eval.stats.PairedDifference.separated`);
every other comparison is stated as not separated, with its interval. A model below the
baseline is said the other way round ("SFT beats base by ..."), the interval negated with it.
Pure functions of the `metrics["paired"]` dicts (`alignlab.eval.paired.paired_comparison`), so
every command that evaluates against a reference can print the same sentences.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alignlab.eval.report import format_value


def _negated(estimate: Mapping[str, Any]) -> dict[str, Any]:
    """The estimate of -d from that of d: mean and bounds negated, the bounds swapped."""

    def minus(value: Any) -> Any:
        return None if value is None else -value

    return {
        **estimate,
        "mean": minus(estimate.get("mean")),
        "lower": minus(estimate.get("upper")),
        "upper": minus(estimate.get("lower")),
    }


def claim(
    name: str,
    comparison: Mapping[str, Any] | None,
    baseline: str,
    measure: str = "score",
    unit: str = "prompts",
) -> str:
    """One sentence on `name` against `baseline` from its paired comparison: "X beats B by
    +d [lo, hi] <measure> on n <unit> (paired)." when separated (B beats X when d < 0), else
    "X vs B: d [lo, hi] <measure> on n <unit>, not separated." (the paired t interval)."""
    difference = (comparison or {}).get("difference") or {}
    if difference.get("mean") is None:
        return f"{name} vs {baseline}: no paired comparison."
    n = difference.get("n")
    where = f"on {n} {unit}" if n is not None else f"on the same {unit}"
    if comparison and comparison.get("separated"):
        if difference["mean"] > 0:
            winner, loser, shown = name, baseline, difference
        else:
            winner, loser, shown = baseline, name, _negated(difference)
        interval = format_value(shown, "interval", signed=True)
        return f"{winner} beats {loser} by {interval} {measure} {where} (paired)."
    interval = format_value(difference, "interval", signed=True)
    return f"{name} vs {baseline}: {interval} {measure} {where}, not separated."


def verdict(
    comparisons: Mapping[str, Mapping[str, Any] | None],
    baseline: str,
    measure: str = "score",
    unit: str = "prompts",
) -> list[str]:
    """One `claim` per model ({display name: its `metrics["paired"]`}, in order), then, when
    the comparisons leave families out of the overall number ("left_out"), a line naming
    them."""
    lines = [claim(name, c, baseline, measure, unit) for name, c in comparisons.items()]
    left_out = sorted({f for c in comparisons.values() for f in (c or {}).get("left_out") or ()})
    if left_out:
        lines.append(
            f"{measure.capitalize()} over every prompt family but {', '.join(left_out)} "
            "(reported apart: see the per-family tables)."
        )
    return lines


def verdict_of_results(
    results: Mapping[str, Any], unit: str = "prompts", leave_out: tuple[str, ...] = ()
) -> list[str]:
    """The `verdict` of an evaluation ({name: EvalResult or its metrics}): every result with a
    paired comparison but the reference itself (the result whose model folder is the
    comparison's baseline) and those named in `leave_out` (e.g. the lab's oracle, a ceiling
    rather than a method), against the reference, called by its result's name where it has
    one, else by its folder; the score is named as the comparison names it ("by": the lab's
    "gold", the harness's "scores.total")."""
    metrics = {name: getattr(result, "metrics", result) for name, result in results.items()}
    compared = {n: m["paired"] for n, m in metrics.items() if m.get("paired")}
    if not compared:
        return []
    baseline = str(next(iter(compared.values())).get("baseline") or "the reference")
    named = [n for n, m in metrics.items() if str(m.get("model")) == baseline]
    comparisons = {n: c for n, c in compared.items() if n not in named and n not in leave_out}
    measure = str(next(iter(compared.values())).get("by") or "score")
    return verdict(comparisons, named[0] if named else baseline, measure, unit)
