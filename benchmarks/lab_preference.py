"""Every offline preference method from the same SFT model on the same simulated labels.

1. lab build and its SFT model (both cached, in runs/lab and runs/lab/sft);
2. sample K=4 responses per train prompt from the SFT model (temperature 1); a panel of 3
   simulated annotators (Bradley-Terry on gold, temperature 0.15, 10% label flips, majority
   vote) labels every pair of a prompt's distinct samples (`alignlab.lab.feedback`). From
   the same labels: every labelled pair ("all"), or one pair per prompt, the most-preferred
   sample against the least ("best_vs_worst", UltraFeedback-style binarisation);
3. DPO, cDPO, IPO, SLiC-HF, ORPO, SimPO (recipe `dpo`) and CoH on the pairs of `--pairs`;
   KTO and RRHF on every labelled pair read as per-sample win rates (`pairs_as=win_rate`:
   KTO's desirable = won more than half of its comparisons, RRHF's ranks = win rates), each
   from the SFT model;
4. heldout evaluation against the SFT model: gold with 95% CIs, KL to SFT, win rate, and
   oracle-SFT on the same prompts: each method's gain as a share of oracle-SFT's, the
   headroom it used (`benchmarks/headroom.py`; `--no-oracle-sft` leaves it out).

A method token is "name" or "name:override:override..." (its own run folder); the override
`data=all|best_vs_worst|rm_ranked` picks its data (rm_ranked: RRHF on lists ranked by a
reward model trained on every labelled pair, as in the RRHF paper).

    python benchmarks/lab_preference.py                     # every method, chosen settings (GPU: --batch-size 512)
    python benchmarks/lab_preference.py --methods dpo,ipo   # a subset
    python benchmarks/lab_preference.py --methods dpo:beta=0.5,dpo:nll_weight=1 --eval-split valid
    python benchmarks/lab_preference.py --seeds 0,1,2       # each method with 3 training seeds

With several `--seeds` every method is trained once per seed from the same SFT model and
data, and the report adds the spread over seeds of each method's paired difference to SFT.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from headroom import ORACLE_SFT, append_headroom
from training_seeds import parse_seeds, seed_override, seeded_name, spread_over_seeds

from alignlab.data.sources import load_records
from alignlab.eval.report import markdown_table, write_report
from alignlab.fileio import write_jsonl
from alignlab.lab.build import LabBuildConfig, build
from alignlab.lab.evaluate import HEADLINE, evaluate_lab, lab_prompts
from alignlab.lab.oracle_sft import oracle_sft_stage
from alignlab.lab.pipeline import feedback_stage, recipe_stage, rm_stage, sft_stage

T = TypeVar("T")

PAIRED = {  # name -> overrides of the dpo recipe (preset dpo_lab)
    "dpo": ["loss=dpo", "beta=0.1"],
    "cdpo": ["loss=dpo", "beta=0.1", "label_smoothing=0.1"],
    "ipo": ["loss=ipo", "beta=0.1"],
    "slic": ["loss=slic", "slic_delta=1.0"],
    "orpo": ["loss=orpo", "orpo_lambda=0.1"],
    "simpo": ["loss=simpo", "beta=2.0", "simpo_gamma=0.5"],
}
OTHERS = {"kto": "kto_lab", "rrhf": "rrhf_lab", "coh": "coh_lab"}  # name -> preset
WIN_RATE = ("kto", "rrhf")  # trained on every labelled pair, read as per-sample win rates
COMMON = ["train.micro_batch_size=16", "train.progress=false"]
SELECTED = (  # each method's setting chosen on 1,500 valid prompts (docs/experiments/lab-history.md, fifth run)
    "dpo:data=all:nll_weight=1",
    "ipo:data=all:nll_weight=1",
    "cdpo:data=all:nll_weight=1",
    "slic:data=all:slic_delta=10",
    "orpo:train.lr=2e-5",
    "simpo:nll_weight=1",
    "kto:train.lr=5e-6:desirable_weight=1.33:train.epochs=2",
    "rrhf:train.lr=1e-5:nll_weight=5",
    "coh",
)


def ranked_lists(rm_pairs: Path, rm_dir: Path) -> list[dict]:
    """Each prompt's distinct labelled samples with their reward-model scores (RRHF's data)."""
    from alignlab.models.reward_ensemble import RewardScorer

    by_prompt: dict[str, tuple[list, dict[str, None]]] = {}
    for row in (record.data for record in load_records(str(rm_pairs))):
        _, texts = by_prompt.setdefault(json.dumps(row["prompt"]), (row["prompt"], {}))
        for side in ("chosen", "rejected"):
            texts[row[side][0]["content"]] = None
    scorer = RewardScorer([str(rm_dir)])
    ranked = []
    for prompt, texts in by_prompt.values():
        scores = scorer.score_batch([prompt] * len(texts), list(texts))
        ranked.append(
            {
                "prompt": prompt,
                "responses": [[{"role": "assistant", "content": x}] for x in texts],
                "scores": [float(s) for s in scores],
            }
        )
    return ranked


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/lab_preference")
    parser.add_argument("--lab", default="runs/lab", help="lab build cache")
    parser.add_argument("--sft", help="SFT run folder; default: the lab build's, LAB/sft")
    parser.add_argument("--n-prompts", type=int, default=3000, help="train prompts to sample")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--eval-prompts", type=int, default=3000)
    parser.add_argument(
        "--eval-split", default="heldout", choices=("heldout", "valid"),
        help="heldout for reported numbers, valid to choose settings",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument(
        "--methods", default=",".join(SELECTED), help="method tokens (default: the chosen settings)"
    )
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs of every method")
    parser.add_argument(
        "--lr", type=float, default=0.0, help="lr of every method; 0: each one's preset"
    )
    parser.add_argument(
        "--pairs", default="best_vs_worst", choices=("best_vs_worst", "all"),
        help="what the paired methods and CoH train on: one pair per prompt, or every labelled pair",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", default="0", help="training seeds of every method, e.g. 0,1,2 (the benchmark's "
        "tables: at least 3)",
    )  # fmt: skip
    parser.add_argument(
        "--no-oracle-sft", action="store_true",
        help="leave out oracle-SFT (SFT on the oracle's answers) and the headroom table",
    )  # fmt: skip
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., T], *fn_args: Any) -> T:
        t = time.perf_counter()
        result = fn(*fn_args)
        timings[name] = round(time.perf_counter() - t, 1)
        return result

    lab = build(LabBuildConfig(out=args.lab))
    sft = sft_stage(lab, args.sft)

    # --- preference data from SFT samples, labelled by simulated annotators ---
    feedback = timed(
        "feedback",
        lambda: feedback_stage(lab, sft, out / "feedback", args.n_prompts, args.k, args.batch_size),
    )
    print(f"labels: {feedback['stats']}")
    data = {"best_vs_worst": feedback["pairs"], "all": feedback["rm_pairs"]}

    # --- RRHF's original data: lists ranked by a reward model on every labelled pair ---
    if "data=rm_ranked" in args.methods:
        data["rm_ranked"] = out / "ranked.jsonl"
        rm = timed("rm", rm_stage, sft, feedback["rm_pairs"], out / "rm", COMMON[1:])
        write_jsonl(data["rm_ranked"], ranked_lists(feedback["rm_pairs"], rm))

    # --- every method from the SFT model ---
    finals: dict[str, Path] = {}
    errors: dict[str, str] = {}
    lr = [f"train.lr={args.lr}"] if args.lr else []  # last, so it wins over the presets
    tokens = [m for m in args.methods.split(",") if m]
    for token, seed in [(t, s) for t in tokens for s in seeds]:
        # "dpo" or a variant "dpo:beta=0.5:train.lr=1e-5" (its own run folder)
        method, *variant = token.split(":")
        default = "all" if method in WIN_RATE else args.pairs
        choice = next((v[5:] for v in variant if v.startswith("data=")), default)
        variant = [v for v in variant if not v.startswith("data=")]
        if choice not in data:
            raise SystemExit(f"{token}: unknown data {choice!r} (one of {', '.join(data)})")
        base = [f"model.path={sft}", f"train.epochs={args.epochs}", *COMMON]
        if method in PAIRED:
            recipe, preset, extra = "dpo", "dpo_lab", [f"data.path={data[choice]}", *PAIRED[method]]
        elif method in OTHERS:
            recipe, preset, extra = method, OTHERS[method], [f"data.path={data[choice]}"]
        else:
            raise SystemExit(f"unknown method {method}")
        name = seeded_name(token, seed)
        folder = out / name.replace(":", "_").replace("=", "-")
        overrides = [*base, *extra, *lr, *variant, *seed_override(seed)]
        try:
            finals[name] = timed(name, recipe_stage, recipe, preset, overrides, folder)
        except Exception as error:  # one broken method must not cost the others' numbers
            traceback.print_exc()
            errors[name] = f"{type(error).__name__}: {error}"

    # --- the reachable headroom: SFT on the oracle's answers, evaluated with the methods ---
    models = {"sft": sft, **finals}
    if not args.no_oracle_sft:  # lab_rl reuses it when its --feedback is this run's
        models[ORACLE_SFT] = timed(ORACLE_SFT, oracle_sft_stage, lab, out / "oracle_sft")

    # --- heldout evaluation against SFT ---
    results = timed(
        "evaluation",
        lambda: evaluate_lab(
            lab.world, models, ref=sft, n_prompts=args.eval_prompts,
            batch_size=args.batch_size, split=args.eval_split,
        ),
    )  # fmt: skip
    paths = write_report(
        results,
        out,
        title="Offline preference methods from the same SFT model",
        table_keys=HEADLINE,
        seeds=spread_over_seeds(results, tokens, seeds) or None,
    )
    print(markdown_table(results, table_keys=HEADLINE))
    if ORACLE_SFT in results:
        prompts = lab_prompts(lab.world, args.eval_split, args.eval_prompts)
        print(append_headroom(paths["markdown"], results, prompts, list(finals)))
    summary = {
        "labels": feedback["stats"], "args": vars(args), "timings_s": timings, "errors": errors,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
