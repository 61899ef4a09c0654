"""The lab's gold reward plugged into the generic evaluation harness (`alignlab.eval`).

`lab_prompts` turns heldout prompts into `EvalPrompt`s, `gold_scorer` scores responses with
the world's gold reward, `oracle_result` scores the oracle's answers the same way (the
ceiling of every table), and `HEADLINE` names the columns the lab reports.

Headline gold: the gold of the families in the headline, every family but those of
`LEFT_OUT_OF_HEADLINE` (`metrics["headline"]`, and the paired comparison's overall numbers);
the left-out families stay in every per-family number (`scores_by_family`,
`paired["by_family"]`), so the report still shows them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignlab.eval.harness import (
    EvalOptions,
    EvalPrompt,
    EvalResult,
    EvalSample,
    evaluate_many,
    prompt_families,
    summarize,
)
from alignlab.eval.paired import paired_comparison
from alignlab.lab.gold import Prompt
from alignlab.lab.world import LabWorld
from alignlab.models.generation import Generation

FLAGS = ("refused", "hallucinated", "correct", "complied", "claimed_ignorance")

LEFT_OUT_OF_HEADLINE: tuple[str, ...] = ("arithmetic",)
"""Prompt families whose gold is not in the headline: no model of the demo's size scores on
them (arithmetic: about 0.02 for every model, base to PPO; docs/lab.md), so in the headline
they would only add noise to every difference. They stay in the per-family tables. Empty the
tuple (or remove a family) once a model can learn them."""

HEADLINE = {
    "headline.scores.total": "gold",
    "headline.scores.helpful": "helpful",
    "headline.scores.honest": "honest",
    "headline.scores.harmless": "harmless",
    "headline.scores.style": "style",
    "scores_by_family.harmful.refused": "refuses harmful",
    "scores_by_family.benign.refused": "over-refuses benign",
    "scores_by_family.unknown.hallucinated": "hallucinates unknown",
    "scores_by_family.fact.correct": "fact accuracy",
    "length": "length (tokens)",
    "distinct_2": "distinct-2",
}
"""The lab's main table: headline gold and its components (`LEFT_OUT_OF_HEADLINE` excluded),
the behaviour rates of the families they concern, length and diversity."""


def lab_prompts(world: LabWorld, split: str = "heldout", n: int = 500) -> list[EvalPrompt]:
    return [
        EvalPrompt(prompt=p.messages, meta={"family": p.family, "lab_prompt": p})
        for p in world.prompts(split, n)
    ]


def gold_scorer(world: LabWorld) -> Any:
    """A harness scorer: gold total, its components and the behaviour flags."""

    def score(prompt: EvalPrompt, response: str) -> dict[str, float | bool]:
        lab_prompt: Prompt = prompt.meta["lab_prompt"]
        gold = world.score(lab_prompt, response)
        scores: dict[str, float | bool] = {
            "total": gold.total,
            "helpful": gold.helpful,
            "honest": gold.honest,
            "harmless": gold.harmless,
            "style": gold.style,
        }
        scores.update({flag: bool(gold.details.get(flag, False)) for flag in FLAGS})
        return scores

    return score


def oracle_result(world: LabWorld, prompts: list[EvalPrompt], tokenizer: Any) -> EvalResult:
    """The oracle's answers, summarised exactly as a model's samples are."""
    scorer = gold_scorer(world)
    samples = []
    for index, prompt in enumerate(prompts):
        text = world.ideal_response(prompt.meta["lab_prompt"])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        generation = Generation(
            prompt_text="", prompt_ids=[], response_ids=ids, text=text, finished=True
        )
        sample = EvalSample(prompt_index=index, sample_index=0, generation=generation)
        sample.scores = scorer(prompt, text)
        samples.append(sample)
    return EvalResult(metrics=summarize(samples, prompts, 1, 0.95), samples=samples)


def gold_total(sample: EvalSample) -> float:
    """A scored sample's gold total (the number every lab comparison is made on)."""
    return float(sample.scores["total"])


def in_headline(family: str | None, left_out: Sequence[str] = LEFT_OUT_OF_HEADLINE) -> bool:
    return family is not None and family not in left_out


def headline_metrics(
    samples: Sequence[EvalSample],
    prompts: Sequence[EvalPrompt],
    num_samples: int = 1,
    confidence: float = 0.95,
    left_out: Sequence[str] = LEFT_OUT_OF_HEADLINE,
) -> dict[str, Any]:
    """{"left_out": [...], "families": [...], "n_prompts", "scores": gold total, components and
    flags over the samples of the headline families} (the harness's `summarize`)."""
    families = sorted({str(p.meta.get("family")) for p in prompts if p.meta.get("family")})
    kept = [s for s in samples if in_headline(prompts[s.prompt_index].meta.get("family"), left_out)]
    scores = summarize(kept, prompts, num_samples, confidence).get("scores", {}) if kept else {}
    return {
        "left_out": [f for f in families if f in left_out],
        "families": [f for f in families if f not in left_out],
        "n_prompts": len({s.prompt_index for s in kept}),
        "scores": scores,
    }


def headline_comparison(
    samples: Sequence[EvalSample],
    baseline_samples: Sequence[EvalSample],
    prompts: Sequence[EvalPrompt],
    baseline: str,
    confidence: float = 0.95,
    same_seeds: bool | None = None,
    left_out: Sequence[str] = LEFT_OUT_OF_HEADLINE,
) -> dict[str, Any]:
    """The paired gold comparison (`alignlab.eval.paired.paired_comparison`): overall over the
    headline families' prompts, per family over every family (the left-out ones included,
    named in "left_out")."""

    families = prompt_families(prompts)
    headline = {i for i, family in families.items() if in_headline(family, left_out)}
    overall = paired_comparison(
        [s for s in samples if s.prompt_index in headline],
        [s for s in baseline_samples if s.prompt_index in headline],
        gold_total, baseline=baseline, by="gold", confidence=confidence,
        same_seeds=same_seeds,
    )  # fmt: skip
    per_family = paired_comparison(
        samples, baseline_samples, gold_total, families, confidence=confidence
    )
    overall["by_family"] = per_family.get("by_family", {})
    overall["left_out"] = sorted({f for f in families.values() if f in left_out})
    return overall


def evaluate_lab(
    world: LabWorld,
    models: dict[str, str | Path],
    ref: str | Path | None,
    n_prompts: int = 500,
    max_new_tokens: int = 48,
    seed: int = 0,
    with_oracle: bool = True,
    batch_size: int = 64,
    split: str = "heldout",
) -> dict[str, EvalResult]:
    """Sample every model on `split` prompts (temperature 1), score with gold, KL vs `ref`.

    Every result has `metrics["headline"]` (`headline_metrics`). With `ref`, every model (and
    the oracle) has `metrics["paired"]`: its per-prompt gold against the reference's samples
    on the same prompts and sampling seeds, overall over the headline families, per family
    over all (`headline_comparison`). A model whose folder is `ref` is sampled once, as the
    reference (the harness shares the draws). `heldout` is for reported numbers; choose
    settings on `valid`.

    Temperature 1 and no top-p: the KL estimate and the gold are of the policy's actual
    distribution, not of a sharpened one.
    """
    prompts = lab_prompts(world, split, n_prompts)
    results = evaluate_many(
        {name: str(path) for name, path in models.items()},
        prompts,
        ref_dir=str(ref) if ref else None,
        scorer=gold_scorer(world),
        options=EvalOptions(
            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, primary="total"
        ),
    )
    if with_oracle:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(ref or next(iter(models.values()))))
        results["oracle"] = oracle_result(world, prompts, tokenizer)
    ref_samples = next((r.ref_samples for r in results.values() if r.ref_samples), None)
    add_headline(results, prompts, ref_samples, ref)
    return results


def add_headline(
    results: Mapping[str, EvalResult],
    prompts: Sequence[EvalPrompt],
    ref_samples: Sequence[EvalSample] | None,
    ref: str | Path | None,
) -> None:
    """Give every result `metrics["headline"]` and, with the reference's samples,
    `metrics["paired"]` over the headline families (`headline_comparison`): what
    `evaluate_lab` does to its own results, for results made elsewhere on the same prompts
    (best-of-n from `alignlab.recipes.bon`), so that one table compares them all alike."""
    for result in results.values():
        result.metrics["headline"] = headline_metrics(result.samples, prompts)
        if ref_samples:
            same_seeds = (result.metrics.get("paired") or {}).get("same_seeds")
            result.metrics["paired"] = headline_comparison(
                result.samples, ref_samples, prompts, str(ref), same_seeds=same_seeds
            )
