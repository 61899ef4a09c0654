"""Synthetic evaluation metrics, shaped as the lab's evaluation records them, for report tests
that need no model."""

from alignlab.eval.stats import mean_ci, paired_difference, proportion_ci

FAMILIES = ("fact", "harmful", "arithmetic")
LEFT_OUT = ["arithmetic"]
N_PROMPTS = 60


def _paired(scores, reference, family_of):
    """metrics["paired"]: overall over the headline families, per family over all of them."""
    headline = [i for i, family in enumerate(family_of) if family not in LEFT_OUT]
    overall = paired_difference([scores[i] for i in headline], [reference[i] for i in headline])
    by_family = {}
    for family in FAMILIES:
        members = [i for i, f in enumerate(family_of) if f == family]
        by_family[family] = paired_difference(
            [scores[i] for i in members], [reference[i] for i in members]
        ).to_dict()
    return {
        "baseline": "runs/sft",
        "by": "gold",
        "same_seeds": True,
        "left_out": LEFT_OUT,
        **overall.to_dict(),
        "by_family": by_family,
    }


def synthetic_results() -> dict[str, dict]:
    """Metrics of the reference (sft), two models (dpo +0.05, ppo +0.01 with per-prompt noise
    of ±0.06) and an oracle (1.0 everywhere): gold overall, headline and per family, a rate,
    KL, the paired comparison with sft; arithmetic left out of the headline."""
    family_of = [FAMILIES[i % 3] for i in range(N_PROMPTS)]
    reference = [0.1 * (i % 7) - 0.2 for i in range(N_PROMPTS)]
    noise = [0.03 * ((7 * i) % 5 - 2) for i in range(N_PROMPTS)]
    scores = {
        "sft": reference,
        "dpo": [r + 0.05 + e for r, e in zip(reference, noise)],
        "ppo": [r + 0.01 + e for r, e in zip(reference, noise)],
        "oracle": [1.0] * N_PROMPTS,
    }
    results = {}
    for name, values in scores.items():
        headline = [v for v, f in zip(values, family_of) if f not in LEFT_OUT]
        results[name] = {
            "model": f"runs/{name}",
            "ref": "runs/sft",
            "headline": {"left_out": LEFT_OUT, "scores": {"total": mean_ci(headline).to_dict()}},
            "scores": {
                "total": mean_ci(values).to_dict(),
                "refused": proportion_ci(N_PROMPTS // 4, N_PROMPTS).to_dict(),
            },
            "scores_by_family": {
                family: {
                    "total": mean_ci(
                        [v for v, f in zip(values, family_of) if f == family]
                    ).to_dict()
                }
                for family in FAMILIES
            },
            "kl": None if name == "oracle" else mean_ci([3.0 + i % 5 for i in range(60)]).to_dict(),
            "paired": _paired(values, reference, family_of),
        }
    return results
