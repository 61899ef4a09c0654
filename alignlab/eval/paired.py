"""Paired comparisons of scored samples: a model against a baseline on the same prompts.

    metrics["paired"] = paired_comparison(samples, ref_samples, score, families, "sft", "scores.total")
    spread = combine_seeds([results_seed0, results_seed1, results_seed2])   # {name: ...}

A prompt is one pair: the mean score of its samples under the model against the mean score of
its samples under the baseline (several samples of a prompt are averaged within it, so the
prompt is the unit the intervals resample). The statistics are
`alignlab.eval.stats.paired_difference`: the mean per-prompt difference with its paired t and
paired bootstrap intervals, the per-prompt win rate (ties half) with a Wilson interval, the two
unpaired means, and `separated` when both intervals exclude 0; overall and per prompt family.
The harness samples every model and the reference with per-prompt seeds
(`alignlab.eval.harness.sampling_seeds`), so a pair shares its prompt and its random numbers.

Training noise: `combine_seeds` takes the same evaluation of methods trained with several
seeds and gives, per method, the mean of the per-seed paired differences with a t interval over
seeds (`alignlab.eval.stats.seed_spread`), beside each seed's own interval across prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alignlab.eval.stats import Estimate, paired_difference, seed_spread


def per_prompt_means(samples: Sequence[Any], score: Callable[[Any], float]) -> dict[int, float]:
    """{prompt_index: mean of `score(sample)` over that prompt's samples}."""
    sums: dict[int, list[float]] = {}
    for sample in samples:
        sums.setdefault(sample.prompt_index, []).append(float(score(sample)))
    return {index: sum(values) / len(values) for index, values in sums.items()}


def paired_comparison(
    samples: Sequence[Any],
    baseline_samples: Sequence[Any],
    score: Callable[[Any], float],
    families: Mapping[int, str] | None = None,
    baseline: str = "",
    by: str = "",
    confidence: float = 0.95,
    same_seeds: bool | None = None,
) -> dict[str, Any]:
    """`paired_difference` of the per-prompt mean scores, overall and per family.

    `samples`, `baseline_samples`: objects with a `prompt_index` (EvalSamples), covering the
    same prompts; `score(sample)`: the number compared; `families`: {prompt_index: family};
    `baseline`, `by`, `same_seeds` are recorded for the report (what the model is compared
    with, by which score, and whether the two were sampled with the same seeds).
    Returns {"baseline", "by", "same_seeds", "difference", "bootstrap", "win_rate",
    "model_mean", "baseline_mean", "separated", "by_family": {family: the last seven}}.
    """
    model_means = per_prompt_means(samples, score)
    baseline_means = per_prompt_means(baseline_samples, score)
    if set(model_means) != set(baseline_means):
        raise ValueError(
            f"a paired comparison needs the same prompts: {len(model_means)} prompts against "
            f"{len(baseline_means)}, {len(set(model_means) ^ set(baseline_means))} not in both"
        )

    def compare(indices: Sequence[int]) -> dict[str, Any]:
        return paired_difference(
            [model_means[i] for i in indices], [baseline_means[i] for i in indices], confidence
        ).to_dict()

    order = sorted(model_means)
    out: dict[str, Any] = {"baseline": baseline, "by": by, "same_seeds": same_seeds}
    out.update(compare(order))
    members: dict[str, list[int]] = {}
    for index in order:
        family = (families or {}).get(index)
        if family is not None:
            members.setdefault(str(family), []).append(index)
    if members:
        out["by_family"] = {family: compare(members[family]) for family in sorted(members)}
    return out


def combine_seeds(
    runs: Sequence[Mapping[str, Any]], confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """The spread over training seeds of every model's paired difference.

    `runs`: one {name: EvalResult or its metrics} per training seed, the same evaluation
    (prompts, eval seed, baseline) of the methods trained with that seed. For each name with a
    `paired` comparison in every run: {"baseline", "by", "across_seeds": mean of the per-seed
    differences with a t interval over seeds, "per_seed": each seed's difference with its
    interval across prompts, "n_seeds", "separated", "by_family": the same per family}.
    """
    if not runs:
        raise ValueError("combine_seeds needs at least one run")
    per_run = [
        {name: getattr(result, "metrics", result) for name, result in run.items()} for run in runs
    ]
    out: dict[str, dict[str, Any]] = {}
    for name in per_run[0]:
        comparisons = [run.get(name, {}).get("paired") for run in per_run]
        if any(c is None for c in comparisons):
            continue
        identities = {(c["baseline"], c["by"]) for c in comparisons}
        if len(identities) > 1:
            raise ValueError(f"{name}: the runs compare with different baselines {identities}")

        def spread(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
            differences = [Estimate.from_dict(entry["difference"]) for entry in entries]
            return seed_spread(differences, confidence).to_dict()

        combined = {"baseline": comparisons[0]["baseline"], "by": comparisons[0]["by"]}
        combined.update(spread(comparisons))
        families = [set(c.get("by_family") or {}) for c in comparisons]
        shared = sorted(set.intersection(*families))
        if shared:
            combined["by_family"] = {
                family: spread([c["by_family"][family] for c in comparisons]) for family in shared
            }
        out[name] = combined
    return out
