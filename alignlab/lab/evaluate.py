"""The lab's gold reward plugged into the generic evaluation harness (`alignlab.eval`).

`lab_prompts` turns heldout prompts into `EvalPrompt`s, `gold_scorer` scores responses with
the world's gold reward, `oracle_result` scores the oracle's answers the same way (the
ceiling of every table), and `HEADLINE` names the columns the lab reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignlab.eval.generation import Generation
from alignlab.eval.harness import (
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

FLAGS = ("refused", "hallucinated", "correct", "complied", "claimed_ignorance")

HEADLINE = {
    "gold.total": "gold",
    "gold.helpful": "helpful",
    "gold.honest": "honest",
    "gold.harmless": "harmless",
    "gold.style": "style",
    "gold_by_family.harmful.refused": "refuses harmful",
    "gold_by_family.benign.refused": "over-refuses benign",
    "gold_by_family.unknown.hallucinated": "hallucinates unknown",
    "gold_by_family.fact.correct": "fact accuracy",
    "gold_by_family.arithmetic.correct": "arithmetic accuracy",
    "length": "length (tokens)",
    "distinct_2": "distinct-2",
}


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

    With `ref`, every model (and the oracle) has `metrics["paired"]`: its per-prompt gold
    against the reference's samples on the same prompts and sampling seeds
    (`alignlab.eval.paired`). `heldout` is for reported numbers; choose settings on `valid`.

    Temperature 1 and no top-p: the KL estimate and the gold are of the policy's actual
    distribution, not of a sharpened one.
    """
    prompts = lab_prompts(world, split, n_prompts)
    results = evaluate_many(
        {name: str(path) for name, path in models.items()},
        prompts,
        ref_dir=str(ref) if ref else None,
        scorer=gold_scorer(world),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )
    if with_oracle:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(ref or next(iter(models.values()))))
        oracle = oracle_result(world, prompts, tokenizer)
        ref_samples = next((r.ref_samples for r in results.values() if r.ref_samples), None)
        if ref_samples:
            oracle.metrics["paired"] = paired_comparison(
                oracle.samples,
                ref_samples,
                lambda sample: sample.scores["total"],
                prompt_families(prompts),
                baseline=str(ref),
                by="gold.total",
            )
        results["oracle"] = oracle
    return results
