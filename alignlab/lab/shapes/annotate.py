"""On-policy preference pairs for VLM DPO, labelled by simulated annotators on correctness and
hallucination (the RLHF-V / LLaVA-RLHF setting: a model's own answers, compared by people).

For each prompt of `<export>/<split>_prompts.jsonl`, K answers are sampled from the model
(`generate_vlm`, temperature 1, a seed per prompt and sample). Each answer's gold utility is

    u = score - hallucination_weight * [the answer names an object, colour or count not in
                                        the image]

(`gold_score`: 1 / 0 for short answers, the CHAIR-weighted recall for captions). The best and
the worst answer by u become a pair when their utilities differ (prompts whose K answers tie
give no pair: nothing to prefer); a panel of simulated annotators (`alignlab.lab.annotators`:
Bradley-Terry on the utility margin with temperature T, label flips, majority vote) labels
it, and the label, not the gold, decides which side is `chosen`. Rows are TRL's vision
preference format with the image's absolute path, plus the utilities and whether the label
agrees with gold, so the label noise is measurable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.data.vlm import load_images
from alignlab.eval.harness import sampling_seeds
from alignlab.fileio import write_jsonl
from alignlab.lab.annotators import Annotator, label_pairs
from alignlab.lab.shapes.evaluate import (
    ExportPrompt,
    Model,
    load_vlm_for_eval,
    read_export_prompts,
)
from alignlab.lab.shapes.gold import gold_score
from alignlab.lab.shapes.text import assistant_turn
from alignlab.models.vlm_generation import generate_vlm

PANEL = (Annotator(), Annotator(), Annotator())
"""Three annotators of the text world's default noise (T = 0.15, 5% flips)."""


@dataclasses.dataclass(frozen=True)
class PairReport:
    prompts: int
    pairs: int
    ties: int
    """Prompts whose K answers all had the same utility (no pair)."""
    labels_bought: int
    gold_agreement: float
    """Share of pairs whose label picks the gold-better answer."""
    chosen_utility: float
    rejected_utility: float

    def summary(self) -> str:
        return (
            f"{self.pairs} pairs from {self.prompts} prompts ({self.ties} all-tied), "
            f"{self.labels_bought} labels; labels agree with gold on {self.gold_agreement:.3f}; "
            f"mean utility chosen {self.chosen_utility:.3f}, rejected {self.rejected_utility:.3f}"
        )


def utility(score: float, hallucinated: bool, hallucination_weight: float) -> float:
    return score - hallucination_weight * float(hallucinated)


def annotated_pairs(
    model: Model,
    export_dir: str | Path,
    out_path: str | Path,
    split: str = "train",
    n: int = 0,
    k: int = 4,
    hallucination_weight: float = 0.5,
    annotators: Sequence[Annotator] = PANEL,
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 32,
) -> PairReport:
    """Sample, score, pair and label (module docstring); write the rows to `out_path`."""
    if k < 2:
        raise ValueError(f"k={k}: a pair needs at least 2 answers per prompt")
    loaded, processor, _ = load_vlm_for_eval(model)
    items = read_export_prompts(export_dir, split, n)
    messages = [item.row.messages for item in items]
    images = [load_images(item.row) for item in items]
    seeds = sampling_seeds(messages, k, seed)
    repeated = [m for m in messages for _ in range(k)]
    generations = generate_vlm(
        loaded, processor, repeated, [i for i in images for _ in range(k)],
        max_new_tokens=max_new_tokens, temperature=1.0, batch_size=batch_size, seeds=seeds,
    )  # fmt: skip
    answers = [
        [g.text.strip() for g in generations[p * k : (p + 1) * k]] for p in range(len(items))
    ]
    out, report = label_answers(items, answers, hallucination_weight, annotators, seed)
    write_jsonl(out_path, out)
    return report


def label_answers(
    items: Sequence[ExportPrompt],
    answers: Sequence[Sequence[str]],
    hallucination_weight: float = 0.5,
    annotators: Sequence[Annotator] = PANEL,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], PairReport]:
    """The labelled pair rows of `answers[p]` (several answers to prompt p) and their report."""
    rows: list[dict[str, Any]] = []
    best_u, worst_u = [], []
    ties = 0
    for item, given in zip(items, answers, strict=True):
        given = list(given)
        golds = [gold_score(item.prompt, a) for a in given]
        utilities = [utility(g.score, g.hallucinated, hallucination_weight) for g in golds]
        best = max(range(len(given)), key=lambda i: utilities[i])
        worst = min(range(len(given)), key=lambda i: utilities[i])
        if utilities[best] == utilities[worst]:
            ties += 1
            continue
        best_u.append(utilities[best])
        worst_u.append(utilities[worst])
        rows.append({"item": item, "answers": (given[best], given[worst])})
    labels = label_pairs(best_u, worst_u, annotators, seed=seed)
    out = []
    for row, best_first, u_best, u_worst in zip(rows, labels.prefers_a, best_u, worst_u):
        item = row["item"]
        chosen, rejected = row["answers"] if best_first else row["answers"][::-1]
        out.append(
            {
                "images": [str(Path(item.row.images[0]).resolve())],
                "prompt": [item.prompt.user_turn()],
                "chosen": [assistant_turn(chosen)],
                "rejected": [assistant_turn(rejected)],
                "type": item.prompt.type,
                "chosen_utility": u_best if best_first else u_worst,
                "rejected_utility": u_worst if best_first else u_best,
                "label_agrees_with_gold": bool(best_first),
            }
        )
    chosen_u = [r["chosen_utility"] for r in out]
    rejected_u = [r["rejected_utility"] for r in out]
    return out, PairReport(
        prompts=len(items),
        pairs=len(out),
        ties=ties,
        labels_bought=labels.cost,
        gold_agreement=labels.gold_agreement,
        chosen_utility=sum(chosen_u) / max(len(chosen_u), 1),
        rejected_utility=sum(rejected_u) / max(len(rejected_u), 1),
    )
