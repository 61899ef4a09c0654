"""Multimodal alignment in the shapes world: LLaVA's stages, then preference tuning against
hallucination, measured on heldout images whose colour-shape-position combinations no
training image has.

    tower + lab LM  `alignlab lab vlm`: a CLIP-style tower pretrained on the shapes, the lab's
                    SFT model as the LLM, a fresh projector (two unaligned halves)
    stage 1         vlm_sft_stage1: the projector alone, on captions
    stage 2         vlm_sft_stage2: projector + LLM, on questions and instructions
    DPO             vlm_dpo from stage 2 on on-policy pairs: K stage-2 answers per train
                    prompt, the best and worst by gold utility, labelled by a panel of
                    simulated annotators (alignlab.lab.shapes.annotate)
    GRPO            vlm_grpo from stage 2 with the gold as reward

Every model answers the same heldout prompts with the same sampling seeds (temperature 1);
the table gives accuracy per question type, POPE accuracy / F1 / yes-ratio, CHAIR_i / CHAIR_s
of the captions and instructions, gold score and KL to stage 2, and each model's paired
difference from stage 2 (95% intervals). Writes OUT/vlm_table.md, OUT/summary.json,
OUT/answers/<model>.jsonl and OUT/answers.png (example images and answers).

    OMP_NUM_THREADS=2 python benchmarks/lab_vlm.py
    python benchmarks/lab_vlm.py --eval-prompts 200 --grpo-steps 20     # a quicker pass

Every stage is cached (alignlab.recipes.stages): a rerun trains only what is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignlab.fileio import atomic_write_text  # noqa: E402
from alignlab.lab.shapes.annotate import annotated_pairs  # noqa: E402
from alignlab.lab.shapes.evaluate import answers_figure, evaluate_vlms, results_table  # noqa: E402
from alignlab.lab.shapes.export import export_shapes  # noqa: E402
from alignlab.lab.shapes.llava import lab_vlm  # noqa: E402
from alignlab.recipes.stages import cached, input_stamp, recipe_stage, stage_key  # noqa: E402

COMMON = ("train.progress=true", "train.tensorboard=false")


def paired_table(results: dict[str, Any], baseline: str) -> str:
    """Each model's paired difference from `baseline` on the same prompts and seeds: accuracy,
    gold score and CHAIR_s (answers with a hallucinated object), mean [95% paired t]."""
    head = ["model", "Δ accuracy", "Δ gold score", "Δ CHAIR_s (hallucinated answers)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, result in results.items():
        if name == baseline or "paired" not in result:
            continue
        cells = [name]
        for key in ("correct", "score", "hallucinated"):
            d = result["paired"][key]["difference"]
            mark = " *" if result["paired"][key].get("separated") else ""
            cells.append(f"{d['mean']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}]{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n(* the interval excludes 0)\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lab_vlm")
    parser.add_argument("--lm", default="runs/lab/sft/final", help="the lab's text model")
    parser.add_argument("--tower", help="a finished tower run to reuse (default OUT/vlm/tower)")
    parser.add_argument("--n-train", type=int, default=2000, help="train images of the export")
    parser.add_argument("--stage2-epochs", type=int, default=3)
    parser.add_argument("--pair-prompts", type=int, default=1000, help="train prompts for DPO")
    parser.add_argument("--samples", type=int, default=4, help="answers per DPO prompt")
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--dpo-lr", type=float, default=5e-5)
    parser.add_argument("--grpo-steps", type=int, default=60)
    parser.add_argument("--grpo-lr", type=float, default=2e-5)
    parser.add_argument("--eval-prompts", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, make: Any) -> Any:
        began = time.perf_counter()
        result = make()
        timings[name] = round(time.perf_counter() - began, 1)
        shown = result if isinstance(result, Path) else type(result).__name__
        print(f"== {name}: {shown} ({timings[name]} s)", flush=True)
        return result

    # --- the world and the two halves ---
    shapes = out / "shapes"
    export_key = stage_key("export", args.seed, args.n_train, 200, 500, 64)
    timed("export", lambda: cached(shapes, export_key, shapes / "manifest.json", lambda: (
        export_shapes(shapes, args.seed, args.n_train, 200, 500, 64)["manifest"]
    )))  # fmt: skip
    llava = timed(
        "tower + lab LM",
        lambda: lab_vlm(args.lm, out / "vlm", tower_run=args.tower, seed=args.seed),
    )

    # --- LLaVA's two stages ---
    stage1 = timed("stage 1", lambda: recipe_stage(
        "vlm_sft", "vlm_sft_stage1",
        [f"model.path={llava}", f"data.path={shapes / 'captions.jsonl'}", *COMMON],
        out / "stage1", key=input_stamp(llava),
    ))  # fmt: skip
    stage2 = timed("stage 2", lambda: recipe_stage(
        "vlm_sft", "vlm_sft_stage2",
        [f"model.path={stage1}", f"data.path={shapes / 'sft.jsonl'}",
         f"train.epochs={args.stage2_epochs}", *COMMON],
        out / "stage2", key=input_stamp(stage1),
    ))  # fmt: skip

    # --- on-policy pairs labelled by simulated annotators, then DPO ---
    pairs_dir = out / "pairs"
    pairs_file = pairs_dir / "pairs.jsonl"
    pair_key = stage_key("pairs", input_stamp(stage2), args.pair_prompts, args.samples, args.seed)

    def make_pairs() -> Path:
        report = annotated_pairs(
            stage2, shapes, pairs_file, n=args.pair_prompts, k=args.samples, seed=args.seed
        )
        atomic_write_text(pairs_dir / "report.json", json.dumps(vars(report), indent=2) + "\n")
        return pairs_file

    timed("pairs", lambda: cached(pairs_dir, pair_key, pairs_file, make_pairs))
    pair_report = json.loads((pairs_dir / "report.json").read_text())
    dpo = timed("DPO", lambda: recipe_stage(
        "vlm_dpo", "vlm_dpo_lab",
        [f"model.path={stage2}", f"data.path={pairs_file}", f"beta={args.dpo_beta}",
         f"train.lr={args.dpo_lr}", *COMMON],
        out / "dpo", key=input_stamp(stage2) + input_stamp(pairs_file),
    ))  # fmt: skip

    # --- GRPO with the gold ---
    grpo = timed("GRPO", lambda: recipe_stage(
        "vlm_grpo", "vlm_grpo_lab",
        [f"model.path={stage2}", f"data.path={shapes / 'train_prompts.jsonl'}",
         f"train.max_steps={args.grpo_steps}", f"train.lr={args.grpo_lr}", *COMMON],
        out / "grpo", key=input_stamp(stage2),
    ))  # fmt: skip

    # --- the heldout table ---
    models = {"stage 1": stage1, "stage 2": stage2, "DPO": dpo, "GRPO": grpo}
    answers_dir = out / "answers"
    results = timed("eval", lambda: evaluate_vlms(
        models, shapes, ref=stage2, baseline="stage 2", answers_dir=answers_dir,
        n=args.eval_prompts, max_new_tokens=48, batch_size=32, seed=args.seed,
    ))  # fmt: skip
    table = results_table(results) + "\n" + paired_table(results, "stage 2")
    figure = answers_figure(
        shapes, {name: answers_dir / f"{name}.jsonl" for name in models}, out / "answers.png"
    )
    summary = {
        "command": " ".join(sys.argv),
        "pairs": pair_report,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - start, 1),
        "results": {name: {k: v for k, v in r.items() if k != "answers"}
                    for name, r in results.items()},
    }  # fmt: skip
    atomic_write_text(out / "vlm_table.md", table + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(table)
    print(f"pairs: {pair_report}")
    print(f"figure: {figure}\nsummary: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
