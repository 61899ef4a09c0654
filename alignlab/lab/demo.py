"""`alignlab lab demo` (`make demo`): build the lab, align the base, measure every step.

[1/7] lab build: tokenizer, pretrained base model, datasets (cached after the first run), of
      the demo's own size (`size=demo`, runs/lab-demo: the benchmarks' model pretrained 5
      epochs instead of 8, so that `make demo` fits in 10 minutes on 2 cores)
[2/7] SFT of the base on the lab's imperfect demonstrations (recipe `sft`, preset sft_lab,
      two epochs)
[3/7] feedback: 4 SFT samples on each of 600 train prompts, every pair labelled by simulated
      annotators
[4/7] reward model on those labels (recipe `rm`, preset rm_lab, one epoch)
[5/7] DPO from SFT on every labelled pair (recipe `dpo`, preset dpo_lab without its NLL term)
[6/7] PPO from SFT with the reward model, gold logged beside it (recipe `ppo`, preset
      ppo_demo: a short run of ppo_lab, 18 steps at lr 2e-5)
[7/7] heldout evaluation on 1,000 prompts, every model paired with SFT (the same prompts and
      sampling seeds; KL to SFT: what DPO and PPO cost from their starting point) and the
      report, which opens with the verdict: <out>/report.md, report.html, results.json,
      plots/ (with PPO's proxy / gold / KL curves)

The verdict (`alignlab.eval.verdict`) claims a difference to SFT only where its paired
interval is separated from 0, and says "not separated" elsewhere; headline gold leaves out
the families of `alignlab.lab.evaluate.LEFT_OUT_OF_HEADLINE`. `seed` changes the training
seeds of SFT, the reward model, DPO and PPO and the evaluation's sampling seed; the lab build
(world, base model) stays the same, so several seeds share it. Build options choose another
build: `alignlab lab demo size=small` runs the demo on the lab benchmarks' build (runs/lab).

Every stage is cached (`alignlab.lab.pipeline`): a second run reuses what is unchanged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from alignlab.eval.curves import plot_curves
from alignlab.eval.report import markdown_table, write_report
from alignlab.eval.verdict import verdict
from alignlab.lab.build import LabBuildConfig, build
from alignlab.lab.evaluate import HEADLINE, evaluate_lab
from alignlab.lab.pipeline import feedback_stage, recipe_stage, rm_stage, sft_stage
from alignlab.training.metrics import read_metrics

STAGES = 7
DEMO_SETTINGS = {
    # chosen on 1,000 valid prompts from one demo's SFT model and labels (docs/experiments/demo.md,
    # "Settings"): paired gold over SFT, one epoch of the RM +0.042 against two epochs' +0.036
    # under PPO, for half the RM's time; PPO at lr 2e-5 +0.061 against 1e-5's +0.042 in the
    # same 24 steps; DPO without the NLL term +0.041 against +0.031 with it. For time (the
    # "Budget" section there): SFT 2 epochs instead of 3 (eval loss 0.293 at the second epoch,
    # 0.273 at the third), PPO 18 steps instead of 24
    "sft": ["train.epochs=2"],
    "rm": ["train.epochs=1"],
    "dpo": ["nll_weight=0"],
    "ppo": ["train.lr=2e-5", "train.max_steps=18"],
}
"""The demo's changes to the presets the lab benchmarks use: what its budget affords."""
DISPLAY = {"base": "base", "sft": "SFT", "dpo": "DPO", "ppo": "PPO"}
"""The demo's models as its verdict names them."""


def run_demo(
    out: str | Path,
    build_cfg: LabBuildConfig,
    n_prompts: int = 1000,
    feedback_prompts: int = 600,  # not 1,000: for time (docs/experiments/demo.md, "Budget")
    overrides: dict[str, list[str]] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """The demo; `overrides` maps a stage (sft, rm, dpo, ppo) to extra recipe overrides, `seed`
    is the training and evaluation seed (see the module docstring)."""
    out = Path(out)
    # seed 0 adds nothing: the presets' own seed, and the cache keys of a run without --seed
    seeded = [f"train.seed={seed}"] if seed else []
    overrides = {
        stage: [*DEMO_SETTINGS.get(stage, []), *seeded, *(overrides or {}).get(stage, [])]
        for stage in ("sft", "rm", "dpo", "ppo")
    }
    start = time.perf_counter()

    def stage(number: int, text: str) -> None:
        print(f"\n[{number}/{STAGES}] {text}  ({time.perf_counter() - start:.0f} s)", flush=True)

    stage(1, f"lab build -> {build_cfg.out}")
    lab = build(build_cfg)

    stage(2, "SFT on the lab's demonstrations")
    sft = sft_stage(lab, out / "sft", overrides.get("sft", []))

    stage(3, f"feedback: 4 SFT samples on {feedback_prompts} prompts, labelled by annotators")
    feedback = feedback_stage(lab, sft, out / "feedback", feedback_prompts)
    print(json.dumps(feedback["stats"]))

    stage(4, "reward model on every labelled pair")
    rm = rm_stage(sft, feedback["rm_pairs"], out / "rm", overrides.get("rm", []))
    rm_eval = [r for r in read_metrics(out / "rm") if "eval/accuracy" in r]
    if rm_eval:
        print(f"reward model: held-out pair accuracy {rm_eval[-1]['eval/accuracy']:.3f}")
    print(f"reward model: {rm}")

    stage(5, "DPO from SFT on every labelled pair")
    dpo = recipe_stage(
        "dpo", "dpo_lab",
        [f"model.path={sft}", f"data.path={feedback['rm_pairs']}", *overrides.get("dpo", [])],
        out / "dpo",
    )  # fmt: skip

    stage(6, "PPO from SFT with the reward model (gold logged, not trained on)")
    ppo = recipe_stage(
        "ppo", "ppo_demo",
        [f"model.path={sft}", f"data.path={lab.data['prompts']}", f"rl.reward={rm}",
         *overrides.get("ppo", [])],
        out / "ppo",
    )  # fmt: skip

    models = {"base": lab.base, "sft": sft, "dpo": dpo, "ppo": ppo}
    stage(7, f"evaluate {', '.join(models)} on {n_prompts} heldout prompts, paired with SFT")
    results = evaluate_lab(lab.world, models, ref=sft, n_prompts=n_prompts, seed=seed)
    lines = verdict(
        {DISPLAY[name]: results[name].metrics.get("paired") for name in ("dpo", "ppo", "base")},
        baseline=DISPLAY["sft"],
        measure="gold",
        unit="heldout prompts",
    )
    lines.append(
        f"One training run per model (seed {seed}): the intervals cover prompts and sampling, "
        "not training noise; `--seed N` retrains, docs/experiments/demo.md compares seeds."
    )
    paths = write_report(
        results, out, title=f"alignlab demo (seed {seed}): base, SFT, DPO, PPO and the oracle",
        table_keys=HEADLINE, verdict=lines,
    )  # fmt: skip
    curves = plot_curves({"ppo": ppo.parent}, out / "plots" / "ppo_curves.png", title="PPO")
    with paths["markdown"].open("a") as handle:
        handle.write(
            f"\n![PPO: proxy reward, gold and KL over training]({curves.relative_to(out)})\n"
        )
    print(markdown_table(results, table_keys=HEADLINE))
    oracle_gold = results["oracle"].metrics["headline"]["scores"]["total"]["mean"]
    for name in ("sft", "dpo", "ppo"):
        gold = results[name].metrics["headline"]["scores"]["total"]["mean"]
        print(f"{DISPLAY[name]} reaches {gold / oracle_gold:.0%} of the oracle's gold")
    print(f"demo done in {time.perf_counter() - start:.0f} s")
    for name, path in paths.items():
        print(f"  {name:10s} {path}")
    print(f"  models     {sft}, {rm}, {dpo}, {ppo}")
    print(f"\nverdict (seed {seed}, paired with SFT):")
    for line in lines:
        print(f"  {line}")
    return paths
