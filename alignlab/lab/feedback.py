"""Human feedback on a policy's own samples, simulated: the data of every preference method.

1. `sample_responses`: K samples per prompt from the policy (temperature 1);
2. `label_samples`: a panel of simulated annotators labels every pair of a prompt's distinct,
   non-empty samples (K(K-1)/2 pairs, majority vote);
3. from the same labels (`alignlab.aif.comparisons.Comparisons`), two datasets in the TRL
   formats:
   - `all_pairs`: every labelled pair (what a reward model learns from);
   - `best_vs_worst`: one pair per prompt, the sample that won the most comparisons against
     the one that won the fewest (Copeland ranks; prompts whose samples all tie are dropped).
     This is how UltraFeedback-style sets are binarised: the gap between the two sides is
     the largest the labels can vouch for, so the pair carries the least label noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignlab.aif.comparisons import Comparisons, all_pair_index, distinct_samples
from alignlab.aif.samples import sample_k_from
from alignlab.lab.annotators import Annotator, label_pairs
from alignlab.lab.gold import Prompt
from alignlab.lab.world import LabWorld

PANEL = (Annotator(temperature=0.15, flip_rate=0.1),) * 3
"""Three annotators, Bradley-Terry on gold at temperature 0.15, 10% careless flips."""


def sample_responses(
    model_dir: str | Path,
    prompts: Sequence[Prompt],
    k: int,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    seed: int = 1,
) -> list[list[str]]:
    """K samples (temperature 1) per prompt from the model in `model_dir`, on the GPU if any."""
    return sample_k_from(
        model_dir, [p.messages for p in prompts], k,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
    )  # fmt: skip


def label_samples(
    world: LabWorld,
    prompts: Sequence[Prompt],
    samples: Sequence[Sequence[str]],
    panel: Sequence[Annotator] = PANEL,
    seed: int = 0,
) -> Comparisons:
    """The panel's labels on every pair of each prompt's distinct, non-empty samples
    (`Comparisons` with P(a preferred) 1 or 0; its prompts are the lab's `Prompt`s, whose
    TRL rows hold their messages)."""
    kept, texts, _ = distinct_samples(prompts, samples)
    index = all_pair_index(texts)
    gold = [[world.score(p, t).total for t in ts] for p, ts in zip(kept, texts)]
    labels = label_pairs(
        [gold[i][a] for i, a, _ in index], [gold[i][b] for i, _, b in index], panel, seed=seed
    )
    pairs = [(i, a, b, float(w)) for (i, a, b), w in zip(index, labels.prefers_a, strict=True)]
    stats = {
        "prompts": len(prompts),
        "prompts_with_two_distinct_samples": len(kept),
        "comparisons": len(pairs),
        "labels_bought": labels.cost,
        "gold_agreement": labels.gold_agreement,
    }
    return Comparisons([p.messages for p in kept], texts, pairs, stats)
