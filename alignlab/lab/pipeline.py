"""The lab's alignment stages, each cached in its own folder: the demo and the lab benchmarks
run the same steps the same way.

    sft_stage       base -> SFT on the lab's demonstrations          (recipe sft, preset sft_lab)
    feedback_stage  K samples per train prompt from SFT, every pair labelled by simulated
                    annotators -> rm_pairs.jsonl (all pairs), pairs.jsonl (best vs worst)
    rm_stage        reward model on all labelled pairs               (recipe rm, preset rm_lab)
    recipe_stage    any recipe from a preset + overrides             (dpo, ppo, ...)

A stage is skipped when its output exists and was made from the same inputs
(`alignlab.recipes.stages`), so a second demo reuses everything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.lab.build import LabArtifacts
from alignlab.lab.feedback import label_samples, sample_responses
from alignlab.lab.gold import Prompt
from alignlab.lab.world import LabWorld
from alignlab.recipes.stages import cached, recipe_stage, stage_key


def sft_stage(
    lab: LabArtifacts, out: str | Path | None = None, overrides: Sequence[str] = ()
) -> Path:
    """The SFT model of the base on the lab's demonstrations, in `out` or by default (None or
    empty) beside the base in the build's folder (`<lab>/sft`: the lab benchmarks' start)."""
    out = Path(out) if out else lab.out / "sft"
    args = [f"model.path={lab.base}", f"data.path={lab.data['sft']}", *overrides]
    return recipe_stage("sft", "sft_lab", args, out, key=lab.manifest["key"])


def feedback_prompts(world: LabWorld, n_prompts: int) -> list[Prompt]:
    """The train prompts `feedback_stage` samples and labels (its own stream of the world)."""
    return world.prompts("train", n_prompts, stream="preference-feedback")


def feedback_stage(
    lab: LabArtifacts,
    policy: Path,
    out: Path,
    n_prompts: int,
    k: int = 4,
    batch_size: int = 64,
) -> dict[str, Path | dict]:
    """Samples of `policy` on `n_prompts` train prompts, labelled by the annotator panel.

    Returns {"pairs": best-vs-worst pairs, "rm_pairs": every labelled pair, "stats": ...}.
    """
    pairs, rm_pairs, stats = out / "pairs.jsonl", out / "rm_pairs.jsonl", out / "stats.json"

    def make() -> Path:
        world = lab.world
        prompts = feedback_prompts(world, n_prompts)
        samples = sample_responses(policy, prompts, k=k, batch_size=batch_size)
        feedback = label_samples(world, prompts, samples)
        best_vs_worst = feedback.best_vs_worst()
        write_jsonl(rm_pairs, feedback.all_pairs())
        write_jsonl(pairs, best_vs_worst)
        summary = {**feedback.stats, "best_vs_worst_pairs": len(best_vs_worst)}
        atomic_write_text(stats, json.dumps(summary, indent=2))
        return stats

    model_key = (policy / "model.safetensors").stat().st_mtime_ns
    cached(out, stage_key(policy, model_key, n_prompts, k), stats, make)
    return {"pairs": pairs, "rm_pairs": rm_pairs, "stats": json.loads(stats.read_text())}


def rm_stage(policy: Path, pairs: Path, out: Path, overrides: Sequence[str] = ()) -> Path:
    """A reward model initialised from `policy`, trained on `pairs`."""
    args = [f"model.path={policy}", f"data.path={pairs}", *overrides]
    return recipe_stage("rm", "rm_lab", args, out, key=pairs.stat().st_mtime_ns)
