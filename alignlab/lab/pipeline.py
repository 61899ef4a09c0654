"""The lab's alignment stages, each cached in its own folder: the demo and the lab benchmarks
run the same steps the same way.

    sft_stage       base -> SFT on the lab's demonstrations          (recipe sft, preset sft_lab)
    feedback_stage  K samples per train prompt from SFT, every pair labelled by simulated
                    annotators -> rm_pairs.jsonl (all pairs), pairs.jsonl (best vs worst)
    rm_stage        reward model on all labelled pairs               (recipe rm, preset rm_lab)
    recipe_stage    any recipe from a preset + overrides             (dpo, ppo, ...)

A stage is skipped when its output exists and was made from the same inputs (a `source.txt`
beside it holds the key of what it was made from), so a second demo reuses everything.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from alignlab.config import load_config
from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.lab.build import LabArtifacts
from alignlab.lab.feedback import label_samples, sample_responses
from alignlab.lab.gold import Prompt
from alignlab.lab.world import LabWorld
from alignlab.recipes import RECIPES, resolve_preset


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def cached(folder: Path, key: str, output: Path, make: Callable[[], Path]) -> Path:
    """`output` if it exists and was made from `key`, else `make()` (then `key` is recorded
    in `folder`/source.txt). `output` must appear only when complete (an atomic write)."""
    marker = folder / "source.txt"
    if output.exists() and marker.exists() and marker.read_text() == key:
        print(f"cached in {output}")
        return output
    result = make()
    atomic_write_text(marker, key)
    return result


def recipe_stage(
    recipe: str, preset: str | None, overrides: Sequence[str], out: Path, key: str = ""
) -> Path:
    """Run `recipe` with a shipped preset and overrides into `out`; its final model folder."""
    module_name, config_name = RECIPES[recipe]
    module = importlib.import_module(module_name)
    args = [*overrides, f"train.output_dir={out}"]
    preset_path = resolve_preset(preset) if preset else None
    # the stage's folder is the pipeline's cache: a stale stage is replaced, not refused
    config = load_config(getattr(module, config_name), preset_path, [*args, "train.overwrite=true"])
    # the preset's text, not its name: an edited preset retrains
    made_from = _key(recipe, preset_path.read_text() if preset_path else "", *args, key)
    return cached(out, made_from, out / "final", lambda: module.run(config))


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
    cached(out, _key(policy, model_key, n_prompts, k), stats, make)
    return {"pairs": pairs, "rm_pairs": rm_pairs, "stats": json.loads(stats.read_text())}


def rm_stage(policy: Path, pairs: Path, out: Path, overrides: Sequence[str] = ()) -> Path:
    """A reward model initialised from `policy`, trained on `pairs`."""
    args = [f"model.path={policy}", f"data.path={pairs}", *overrides]
    return recipe_stage("rm", "rm_lab", args, out, key=pairs.stat().st_mtime_ns)
