"""How much of the reachable headroom each method used, measured on the same prompts.

Oracle-SFT (`alignlab.lab.oracle_sft`: the SFT recipe on the oracle's answers to the same
prompts) shows what this model size reaches from the same base with perfect demonstrations;
its paired gain over SFT is the gap a method trained from SFT could be expected to close
(docs/experiments/ceiling.md). A benchmark evaluates oracle-SFT beside its methods, with the
same prompts and sampling seeds, and reports each method's gain as a share of oracle-SFT's
(`alignlab.eval.stats.share_of_gap`, over the headline families), with a paired bootstrap
interval:

    models[ORACLE_SFT] = oracle_sft_stage(lab, out / "oracle_sft")   # evaluated with the rest
    table = append_headroom(report_md, results, prompts, methods)    # the section, also returned
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignlab.eval.harness import prompt_families
from alignlab.eval.paired import per_prompt_means
from alignlab.eval.report import format_comparison, format_value
from alignlab.eval.stats import share_of_gap
from alignlab.lab.evaluate import gold_total, in_headline

ORACLE_SFT = "oracle-sft"
"""The name a benchmark gives oracle-SFT among its evaluated models."""


def headroom(
    results: Mapping[str, Any],
    prompts: Sequence[Any],
    methods: Sequence[str],
    reachable: str = ORACLE_SFT,
    ref: str = "sft",
) -> dict[str, dict[str, Any]]:
    """{method: share_of_gap(method, reachable, ref).to_dict()} over the headline prompts; the
    per-prompt gold of each is the mean over its samples (`per_prompt_means`)."""
    families = prompt_families(prompts)
    keep = sorted(i for i, family in families.items() if in_headline(family))

    def scores(name: str) -> list[float]:
        means = per_prompt_means(results[name].samples, gold_total)
        return [means[i] for i in keep]

    top, base = scores(reachable), scores(ref)
    return {m: share_of_gap(scores(m), top, base).to_dict() for m in methods if m in results}


def headroom_table(
    shares: Mapping[str, Mapping[str, Any]], results: Mapping[str, Any], reachable: str = ORACLE_SFT
) -> str:
    """Markdown: each method's paired Δ gold to the reference, the reachable model's, and the
    share (`*` on a Δ: separated from 0)."""
    top = format_comparison(results[reachable].metrics.get("paired"), "marked")
    lines = [
        f"| method | Δ gold to SFT (paired t) | Δ of {reachable} | share of {reachable}'s gain |",
        "|---|---|---|---|",
    ]
    for method, share in shares.items():
        delta = format_comparison(results[method].metrics.get("paired"), "marked")
        lines.append(f"| {method} | {delta} | {top} | {format_value(share, 'interval')} |")
    return "\n".join(lines)


def append_headroom(
    markdown: Path, results: Mapping[str, Any], prompts: Sequence[Any], methods: Sequence[str]
) -> str:
    """Append the headroom section (`headroom_table` of `headroom` against SFT) to a report's
    markdown file; the section's text."""
    shares = headroom(results, prompts, methods)
    section = (
        f"\n## Headroom: each method's gain as a share of {ORACLE_SFT}'s\n\n"
        f"{ORACLE_SFT}: the SFT recipe on the oracle's answers to the same prompts (what this "
        "model size reaches with perfect demonstrations). Share: Σ(method - SFT) / "
        f"Σ({ORACLE_SFT} - SFT) over the same headline prompts, 95% paired bootstrap interval "
        "(`alignlab.eval.stats.share_of_gap`).\n\n"
        f"{headroom_table(shares, results)}\n"
    )
    with markdown.open("a") as handle:
        handle.write(section)
    return section
