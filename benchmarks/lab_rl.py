"""Every RL method from the same SFT model with the same reward model, gold tracked throughout.

1. lab build, its SFT model (runs/lab/sft), simulated feedback on SFT samples and the reward
   model on it (the stages of `alignlab.lab.pipeline`, shared with benchmarks/lab_preference.py
   and cached: point --feedback at that benchmark's folder to reuse its labels);
2. PPO, RLOO, GRPO, REINFORCE++, DAPO, GSPO, CISPO, ReST and RAFT from the SFT model on the
   lab's RL prompts, the reward model as reward, the lab's gold logged beside it (never trained on);
3. best-of-n from the SFT model with the same reward model (no training; KL in closed form);
4. over-optimisation: the same PPO with a reward model trained on a few hundred pairs only,
   for longer: its proxy reward keeps rising while gold falls (Gao et al. 2022);
5. heldout evaluation against the SFT model (gold with 95% CIs, KL, win rate), and the
   proxy / gold / KL curves of every RL run (plots/curves.png);
6. oracle-SFT evaluated with them: each method's gain as a share of oracle-SFT's, the
   headroom it used (`benchmarks/headroom.py`; `--no-oracle-sft` leaves it out).

    python benchmarks/lab_rl.py                                  # everything
    python benchmarks/lab_rl.py --methods ppo,grpo --bon ""      # a subset
    python benchmarks/lab_rl.py --methods grpo:train.lr=2e-5     # a variant, its own folder
    python benchmarks/lab_rl.py --seeds 0,1,2 --bon "" --small-rm-pairs 0   # 3 training seeds

With several `--seeds` every RL method is trained once per seed from the same SFT model and
reward model, and the report adds the spread over seeds of each one's paired difference to SFT.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

from headroom import ORACLE_SFT, append_headroom
from training_seeds import parse_seeds, seed_override, seeded_name, spread_over_seeds

from alignlab.eval.curves import overoptimisation_summary, plot_curves
from alignlab.eval.report import markdown_table, write_report
from alignlab.fileio import write_jsonl
from alignlab.lab.build import LabBuildConfig, build
from alignlab.lab.evaluate import HEADLINE, add_headline, evaluate_lab, gold_scorer, lab_prompts
from alignlab.lab.oracle_sft import oracle_sft_stage
from alignlab.lab.pipeline import feedback_stage, recipe_stage, rm_stage, sft_stage
from alignlab.training.metrics import read_metrics

GOLD = "alignlab.lab.rewards:gold_reward"
RL = (
    "ppo",
    "rloo",
    "grpo",
    "reinforce_pp",
    "dapo",
    "gspo",
    "cispo",
)  # reward under rl.*, others: sampling.*
METHODS = (*RL, "rest", "raft")
COMMON = ["train.progress=false"]


def rl_run(method: str, variant: list[str], sft: Path, prompts: Path, rm: Path, out: Path) -> Path:
    section = "rl" if method in RL else "sampling"
    args = [
        f"model.path={sft}", f"data.path={prompts}", f"{section}.reward={rm}",
        f"{section}.gold={GOLD}", *COMMON, *variant,
    ]  # fmt: skip
    return recipe_stage(method, f"{method}_lab", args, out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/lab_rl")
    parser.add_argument("--lab", default="runs/lab", help="lab build cache")
    parser.add_argument("--sft", help="SFT run folder; default: the lab build's, LAB/sft")
    parser.add_argument("--feedback", default="runs/lab_preference/feedback")
    parser.add_argument("--n-prompts", type=int, default=3000, help="feedback prompts")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--bon", default="4,16", help="best-of-n sizes; empty = none")
    parser.add_argument("--small-rm-pairs", type=int, default=300, help="0 = no small-RM run")
    parser.add_argument(
        "--overopt", default="ppo:rl.kl_coef=0.0:train.max_steps=300",
        help="the run with the small RM: method[:override...]",
    )  # fmt: skip
    parser.add_argument("--eval-prompts", type=int, default=1500)
    parser.add_argument("--eval-split", default="heldout", choices=("heldout", "valid"))
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument(
        "--seeds", default="0", help="training seeds of every RL method, e.g. 0,1,2"
    )
    parser.add_argument(
        "--no-oracle-sft", action="store_true",
        help="leave out oracle-SFT (SFT on the oracle's answers) and the headroom table",
    )  # fmt: skip
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}

    # --- SFT, feedback and the reward model (cached, shared with lab_preference) ---
    lab = build(LabBuildConfig(out=args.lab))
    sft = sft_stage(lab, args.sft)
    feedback = feedback_stage(lab, sft, Path(args.feedback), args.n_prompts)
    rm = rm_stage(sft, feedback["rm_pairs"], Path(args.feedback).parent / "rm", COMMON)
    rm_eval = [r for r in read_metrics(rm.parent) if "eval/accuracy" in r][-1]
    prompts = lab.data["prompts"]

    # --- every RL method from SFT with that reward model ---
    finals: dict[str, Path] = {}
    tokens = [m for m in args.methods.split(",") if m]
    for token, seed in [(t, s) for t in tokens for s in seeds]:
        method, *variant = token.split(":")
        name = seeded_name(token, seed)
        t = time.perf_counter()
        try:
            folder = out / name.replace(":", "_").replace("=", "-")
            variant = [*variant, *seed_override(seed)]
            finals[name] = rl_run(method, variant, sft, prompts, rm, folder)
        except Exception as error:  # one broken method must not cost the others' numbers
            traceback.print_exc()
            errors[name] = f"{type(error).__name__}: {error}"
        timings[name] = round(time.perf_counter() - t, 1)

    # --- over-optimisation: a reward model from a few hundred pairs, optimised for longer ---
    overopt = None
    if args.small_rm_pairs:
        rows = feedback["rm_pairs"].read_text().splitlines()[: args.small_rm_pairs]
        small_pairs = out / "small_rm" / "pairs.jsonl"
        write_jsonl(small_pairs, [json.loads(r) for r in rows])
        small_rm = rm_stage(sft, small_pairs, out / "small_rm", COMMON)
        method, *variant = args.overopt.split(":")
        t = time.perf_counter()
        overopt = rl_run(method, variant, sft, prompts, small_rm, out / "overopt")
        timings["overopt"] = round(time.perf_counter() - t, 1)

    # --- heldout evaluation against SFT, best-of-n beside the trained models ---
    t = time.perf_counter()
    models = {"sft": sft, **finals, **({"overopt (small RM)": overopt} if overopt else {})}
    if not args.no_oracle_sft:  # beside the feedback, so lab_preference's is reused
        models[ORACLE_SFT] = oracle_sft_stage(lab, Path(args.feedback).parent / "oracle_sft")
    results = evaluate_lab(
        lab.world, models, ref=sft, n_prompts=args.eval_prompts, batch_size=args.batch_size,
        split=args.eval_split,
    )  # fmt: skip
    eval_prompts = lab_prompts(lab.world, args.eval_split, args.eval_prompts)  # evaluate_lab's
    if args.bon:
        from alignlab.eval.harness import EvalOptions, load_for_eval
        from alignlab.recipes.bon import evaluate_best_of_n

        policy = load_for_eval(str(sft))
        best_of = {
            f"best-of-{n}": evaluate_best_of_n(
                policy, eval_prompts, str(rm), n, ref=policy, scorer=gold_scorer(lab.world),
                options=EvalOptions(max_new_tokens=48, batch_size=args.batch_size, primary="total"),
            )
            for n in [int(x) for x in args.bon.split(",")]
        }  # fmt: skip
        # headline gold and the paired comparison with the same SFT samples as every method's
        add_headline(best_of, eval_prompts, results["sft"].samples, sft)
        results.update(best_of)
    timings["evaluation"] = round(time.perf_counter() - t, 1)

    # --- report: table, curves, over-optimisation summary ---
    paths = write_report(
        results, out, title="RL methods from the same SFT model and reward model",
        table_keys=HEADLINE, seeds=spread_over_seeds(results, tokens, seeds) or None,
    )  # fmt: skip
    runs = {  # the runs that log proxy, gold and KL per step
        name: path.parent
        for name, path in models.items()
        if name != "sft" and any("train/gold_mean" in r for r in read_metrics(path.parent))
    }
    curves = plot_curves(runs, out / "plots" / "curves.png", title="RL training curves")
    summary = {
        "reward_model": {"pairs": feedback["stats"]["comparisons"], **rm_eval},
        "overoptimisation": {n: overoptimisation_summary(read_metrics(p)) for n, p in runs.items()},
        "args": vars(args),
        "timings_s": timings,
        "errors": errors,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with paths["markdown"].open("a") as handle:
        handle.write(
            f"\n![proxy, gold, KL, entropy and clip fraction over training]({curves.relative_to(out)})\n"
        )
    if ORACLE_SFT in results:
        methods = [*finals, *(n for n in results if n.startswith("best-of-"))]
        print(append_headroom(paths["markdown"], results, eval_prompts, methods))
    print(markdown_table(results, table_keys=HEADLINE))
    print(json.dumps(summary, indent=2))
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
