"""Every offline preference method from the same SFT model on the same simulated labels.

1. lab build and the demo's SFT model (both cached: run `make demo` first to save time);
2. sample 4 responses per train prompt from the SFT model (temperature 1), score them with gold
   and let a panel of 3 simulated annotators (Bradley-Terry on gold, temperature 0.15, 10%
   label flips, majority vote) label the first two: the preference pairs;
3. a reward model (recipe `rm`) on those pairs; its scores of all 4 samples give RRHF's ranks;
4. DPO, cDPO, IPO, SLiC-HF, ORPO, SimPO (recipe `dpo`), KTO (the pairs split in two), RRHF,
   Chain of Hindsight, each from the SFT model;
5. heldout evaluation against the SFT model: gold with 95% CIs, KL to SFT, win rate.

    python benchmarks/lab_preference.py                     # everything (about 25 min, 2 cores)
    python benchmarks/lab_preference.py --methods dpo,ipo   # a subset
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from alignlab.cli import resolve_preset
from alignlab.config import load_config
from alignlab.eval.report import markdown_table, write_report
from alignlab.fileio import write_jsonl
from alignlab.lab.annotators import Annotator, label_pairs
from alignlab.lab.build import LabBuildConfig, build
from alignlab.lab.evaluate import HEADLINE, evaluate_lab

PAIRED = {  # name -> overrides of the dpo recipe (preset dpo_lab)
    "dpo": ["loss=dpo", "beta=0.1"],
    "cdpo": ["loss=dpo", "beta=0.1", "label_smoothing=0.1"],
    "ipo": ["loss=ipo", "beta=0.1"],
    "slic": ["loss=slic", "slic_delta=1.0", "nll_weight=0.1"],
    "orpo": ["loss=orpo", "orpo_lambda=0.1"],
    "simpo": ["loss=simpo", "beta=2.0", "simpo_gamma=0.5"],
}
OTHERS = ("kto", "rrhf", "coh")
COMMON = ["train.micro_batch_size=16", "train.progress=false"]


def sample_and_label(world, sft_dir: Path, out: Path, n_prompts: int, k: int = 4) -> dict:  # noqa: ANN001
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.eval.generation import generate

    prompts = world.prompts("train", n_prompts, stream="preference-sweep")
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    gens = generate(
        model, tokenizer, [p.messages for p in prompts for _ in range(k)],
        max_new_tokens=48, temperature=1.0, batch_size=64, seed=1,
    )  # fmt: skip
    texts = [[gens[i * k + j].text for j in range(k)] for i in range(len(prompts))]
    panel = [Annotator(temperature=0.15, flip_rate=0.1)] * 3
    keep = [i for i, t in enumerate(texts) if t[0].strip() and t[1].strip() and t[0] != t[1]]
    gold_a = [world.score(prompts[i], texts[i][0]).total for i in keep]
    gold_b = [world.score(prompts[i], texts[i][1]).total for i in keep]
    labels = label_pairs(gold_a, gold_b, panel, seed=0)
    pairs = []
    for i, a_wins in zip(keep, labels.prefers_a, strict=True):
        chosen, rejected = (texts[i][0], texts[i][1]) if a_wins else (texts[i][1], texts[i][0])
        pairs.append(
            {
                "prompt": prompts[i].messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    write_jsonl(out / "pairs.jsonl", pairs)
    stats = {
        "pairs": len(pairs),
        "labels_bought": labels.cost,
        "gold_agreement": labels.gold_agreement,
    }
    return {"texts": texts, "prompts": prompts, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/lab_preference")
    parser.add_argument("--lab", default="runs/lab", help="lab build cache")
    parser.add_argument("--sft", default="runs/demo/sft/final", help="SFT model (built if absent)")
    parser.add_argument("--n-prompts", type=int, default=1500)
    parser.add_argument("--eval-prompts", type=int, default=500)
    parser.add_argument("--methods", default=",".join([*PAIRED, *OTHERS]))
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs of every method")
    parser.add_argument(
        "--lr", type=float, default=0.0, help="lr of every method; 0: each one's default"
    )
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    from alignlab.recipes import coh, dpo, kto, rm, rrhf, sft

    lab = build(LabBuildConfig(out=args.lab))
    sft_dir = Path(args.sft)
    if not (sft_dir / "config.json").exists():
        cfg = load_config(
            sft.SFTConfig, resolve_preset("sft_lab"),
            [f"model.path={lab.base}", f"data.path={lab.data['sft']}", f"train.output_dir={sft_dir.parent}"],
        )  # fmt: skip
        sft_dir = sft.run(cfg)
    world = lab.world

    # --- preference data from SFT samples, labelled by simulated annotators ---
    t = time.perf_counter()
    sampled = sample_and_label(world, sft_dir, out, args.n_prompts)
    timings["sample_and_label"] = time.perf_counter() - t
    print(f"labelled pairs: {sampled['stats']}")
    pairs = out / "pairs.jsonl"

    # --- reward model, and RM-ranked lists for RRHF ---
    t = time.perf_counter()
    rm_cfg = load_config(
        rm.RMConfig, resolve_preset("rm_lab"),
        [f"model.path={sft_dir}", f"data.path={pairs}", f"train.output_dir={out / 'rm'}", "train.progress=false"],
    )  # fmt: skip
    rm_dir = rm.run(rm_cfg)
    timings["rm"] = time.perf_counter() - t
    from alignlab.eval.reward_ensemble import RewardScorer

    scorer = RewardScorer([str(rm_dir)])
    ranked = []
    for prompt, texts in zip(sampled["prompts"], sampled["texts"], strict=True):
        texts = [x for x in dict.fromkeys(texts) if x.strip()]
        if len(texts) < 2:
            continue
        scores = scorer.score_batch([prompt.messages] * len(texts), texts)
        ranked.append(
            {
                "prompt": prompt.messages,
                "responses": [[{"role": "assistant", "content": x}] for x in texts],
                "scores": [float(s) for s in scores],
            }
        )
    write_jsonl(out / "ranked.jsonl", ranked)

    # --- every method from the SFT model ---
    methods = [m for m in args.methods.split(",") if m]
    finals: dict[str, Path] = {}
    lr = [f"train.lr={args.lr}"] if args.lr else []  # last, so it wins over the defaults
    for method in methods:
        t = time.perf_counter()
        run_dir = out / method
        base = [
            f"model.path={sft_dir}",
            f"train.output_dir={run_dir}",
            f"train.epochs={args.epochs}",
            *COMMON,
        ]
        if method in PAIRED:
            cfg = load_config(
                dpo.DPOConfig,
                resolve_preset("dpo_lab"),
                [*base, f"data.path={pairs}", *PAIRED[method], *lr],
            )
            finals[method] = dpo.run(cfg)
        elif method == "kto":
            cfg = load_config(
                kto.KTOConfig,
                None,
                [*base, f"data.path={pairs}", "train.lr=5e-5", "data.max_length=256", *lr],
            )
            finals[method] = kto.run(cfg)
        elif method == "rrhf":
            cfg = load_config(
                rrhf.RRHFConfig,
                None,
                [
                    *base,
                    f"data.path={out / 'ranked.jsonl'}",
                    "train.lr=5e-5",
                    "data.max_length=256",
                    *lr,
                ],
            )
            finals[method] = rrhf.run(cfg)
        elif method == "coh":
            cfg = load_config(
                coh.CoHConfig,
                None,
                [*base, f"data.path={pairs}", "train.lr=1e-4", "data.max_length=384", *lr],
            )
            finals[method] = coh.run(cfg)
        else:
            raise SystemExit(f"unknown method {method}")
        timings[method] = time.perf_counter() - t

    # --- heldout evaluation against SFT ---
    t = time.perf_counter()
    results = evaluate_lab(
        world, {"sft": sft_dir, **finals}, ref=sft_dir, n_prompts=args.eval_prompts
    )
    timings["evaluation"] = time.perf_counter() - t
    write_report(
        results,
        out,
        title="Offline preference methods from the same SFT model",
        table_keys=HEADLINE,
    )
    print(markdown_table(results, table_keys=HEADLINE))
    summary = {
        "labels": sampled["stats"],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
