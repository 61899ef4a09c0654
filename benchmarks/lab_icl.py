"""In-context alignment in the lab: every strategy on the base and on the SFT model, against
SFT and DPO from the same lab, on heldout prompts scored by gold.

    python benchmarks/lab_icl.py --lab runs/lab --out runs/lab_icl --eval-prompts 500

Per (model, strategy): headline gold and its components, refusal of harmful requests,
over-refusal of benign ones, hallucination on unknown entities, the paired gold difference to
SFT (same prompts and sampling seeds), KL to the model the strategy wraps where it is defined
(prompt strategies: log π(y | v, x) - log π(y | x) over the sampled tokens; ARGS: its own
log-probs from `sampler_logps`; best-of-n: `kl_estimate` from independent samples of the
wrapped model, beside the analytic bound), and per answer: tokens generated, forward passes
and seconds. Temperature 1 throughout (the KL needs the policy's own samples).

The SFT model, the feedback and the reward model come from the lab pipeline's caches (shared
with lab_rl / lab_preference); DPO is trained here (preset dpo_lab without its NLL term, as
the demo trains it) unless --dpo names a folder. Writes OUT/results.json, OUT/table.md,
OUT/gold_vs_seconds.png and OUT/samples.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignlab.config import load_config  # noqa: E402
from alignlab.eval.harness import (  # noqa: E402
    EvalResult,
    EvalSample,
    _as_prompted_by,
    load_for_eval,
    sampling_seeds,
    score_samples,
    summarize,
)
from alignlab.eval.stats import kl_estimate  # noqa: E402
from alignlab.fileio import atomic_write_text, write_jsonl  # noqa: E402
from alignlab.icl import Backend, Sampling, build_stack  # noqa: E402
from alignlab.icl.best_of_n import kl_estimate as bon_kl_estimate  # noqa: E402
from alignlab.lab.build import LabBuildConfig, build  # noqa: E402
from alignlab.lab.evaluate import add_headline, gold_scorer, lab_prompts  # noqa: E402
from alignlab.lab.gold import ideal_response  # noqa: E402
from alignlab.lab.pipeline import feedback_stage, recipe_stage, rm_stage, sft_stage  # noqa: E402
from alignlab.models.logprobs import sequence_logps  # noqa: E402
from alignlab.rl.rewards import build_reward_fn  # noqa: E402

COMMON = ["train.progress=false"]
PROMPT_ONLY = {"principles", "urial", "urial_lab_demos", "retrieved"}
"""Strategies that only change the prompt: π_icl(y | x) = π(y | v, x), so the KL to the
wrapped model is computable from the sample's tokens."""


def lab_demonstrations(world: Any, path: Path) -> Path:
    """URIAL's three kinds of demonstration (a helpful answer, a refusal, an honest "I don't
    know") in the lab's own words, from train prompts: the built-in ones run to 605 tokens of
    the lab's vocabulary, past the 256 or 512 a lab base is pretrained on."""
    wanted = ("fact", "harmful", "unknown")
    found = {}
    for prompt in world.prompts("train", 200, stream="urial-demos"):
        found.setdefault(prompt.family, prompt)
    rows = [{"prompt": found[f].text, "completion": ideal_response(found[f])} for f in wanted]
    write_jsonl(path, rows)
    return path


def strategies(
    rm: Path, pool: Path, demos: Path, bon: int, args_weight: float
) -> dict[str, list[Any]]:
    return {
        "plain": [],
        "principles": ["principles"],
        "urial": [{"strategy": "urial", "k": 3}],
        "urial_lab_demos": [{"strategy": "urial", "k": 3, "demonstrations": str(demos)}],
        "retrieved": [{"strategy": "retrieved", "pool": str(pool), "k": 3}],
        f"best_of_{bon}": [{"strategy": "best_of_n", "n": bon, "reward": str(rm)}],
        "critique_revise": ["critique_revise"],
        "args": [{"strategy": "args", "reward": str(rm), "weight": args_weight, "top_k": 10}],
        f"urial_lab_demos+best_of_{bon}": [
            {"strategy": "urial", "k": 3, "demonstrations": str(demos)},
            {"strategy": "best_of_n", "n": bon, "reward": str(rm)},
        ],
    }


def run_one(
    loaded: Any,
    stack_spec: list[Any],
    prompts: list[Any],
    sampling: Sampling,
    seed: int,
    scorer: Any,
) -> tuple[list[EvalSample], list[Any]]:
    queries = [p.prompt for p in prompts]
    seeds = sampling_seeds(queries, 1, seed)
    answers = build_stack(stack_spec).answer(
        Backend(loaded.model, loaded.tokenizer), queries, sampling, seeds
    )
    samples = [
        EvalSample(i, 0, dataclasses.replace(a.generation, text=a.text))
        for i, a in enumerate(answers)
    ]
    score_samples(samples, prompts, scorer, None)
    return samples, answers


def kl_to_wrapped(
    name: str,
    loaded: Any,
    samples: list[EvalSample],
    answers: list[Any],
    prompts: list[Any],
    reference_rewards: list[list[float]] | None,
    batch_size: int,
) -> dict[str, Any] | None:
    """KL(strategy ‖ wrapped model) where it is defined (module docstring), else None."""
    if name == "plain":
        return {"mean": 0.0, "how": "the model itself"}
    plain_view = _as_prompted_by(loaded.tokenizer, samples, prompts)
    if name in PROMPT_ONLY or name == "args":
        base = sequence_logps(loaded.model, loaded.tokenizer, plain_view, batch_size)
        if name == "args":
            mine = [sum(a.generation.sampler_logps) for a in answers]
            how = "ARGS log-probs minus the model's"
        else:
            generations = [s.generation for s in samples]
            mine = sequence_logps(loaded.model, loaded.tokenizer, generations, batch_size).tolist()
            how = "log π(y | v, x) - log π(y | x)"
        return {**kl_estimate(mine, base.tolist()).to_dict(), "how": how}
    if name.startswith("best_of_") and reference_rewards is not None:
        info = [a.info["best_of_n"] for a in answers]
        n = info[0]["n"]
        measured = bon_kl_estimate([i["reward"] for i in info], reference_rewards, n)
        return {"mean": measured, "bound": info[0]["kl_bound"], "how": "estimate from samples"}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lab", default="runs/lab")
    parser.add_argument(
        "--build", action="append", default=[], metavar="KEY=VALUE",
        help="a lab build option (alignlab lab build --help), e.g. icl_share=0.3",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/lab_icl")
    parser.add_argument("--feedback", default="runs/lab_preference/feedback")
    parser.add_argument("--n-prompts", type=int, default=3000, help="feedback prompts")
    parser.add_argument("--dpo", default="", help="a DPO model folder; default: train one")
    parser.add_argument("--eval-prompts", type=int, default=500)
    parser.add_argument("--split", default="heldout", choices=("heldout", "valid"))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bon", type=int, default=8)
    parser.add_argument("--args-weight", type=float, default=1.0)
    parser.add_argument("--reference-samples", type=int, default=8, help="for best-of-n's KL")
    parser.add_argument("--only", default="", help="comma-separated strategy names")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    lab = build(load_config(LabBuildConfig, None, [f"out={args.lab}", *args.build]))
    sft = sft_stage(lab)
    feedback = feedback_stage(lab, sft, Path(args.feedback), args.n_prompts)
    rm = rm_stage(sft, feedback["rm_pairs"], Path(args.feedback).parent / "rm", COMMON)
    dpo = Path(args.dpo) if args.dpo else recipe_stage(
        "dpo", "dpo_lab",
        [f"model.path={sft}", f"data.path={feedback['rm_pairs']}", "nll_weight=0", *COMMON],
        out / "dpo",
    )  # fmt: skip

    world = lab.world
    prompts = lab_prompts(world, args.split, args.eval_prompts)
    scorer = gold_scorer(world)
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens, temperature=1.0, batch_size=args.batch_size
    )
    demos = lab_demonstrations(world, out / "urial_demos.jsonl")
    table = strategies(rm, lab.data["sft"], demos, args.bon, args.args_weight)
    if args.only:
        table = {k: v for k, v in table.items() if k == "plain" or k in args.only.split(",")}
    reward_fn = build_reward_fn(str(rm))

    results: dict[str, EvalResult] = {}
    extra: dict[str, dict[str, Any]] = {}
    rows = []
    for model_name, folder in (("base", lab.base), ("sft", sft), ("dpo", dpo)):
        loaded = load_for_eval(str(folder))
        reference_rewards = None
        for strategy, spec in table.items():
            if model_name == "dpo" and strategy != "plain":
                continue  # DPO is the fine-tuned comparison, not a wrapped model
            name = f"{model_name} {strategy}"
            t = time.perf_counter()
            samples, answers = run_one(loaded, spec, prompts, sampling, args.seed, scorer)
            seconds = time.perf_counter() - t
            if strategy.startswith("best_of_") and reference_rewards is None:
                # independent samples of the wrapped model (other seeds than the candidates')
                queries = [p.prompt for p in prompts]
                m = args.reference_samples
                ref_seeds = sampling_seeds(queries, m, args.seed + 1)
                expanded = [q for q in queries for _ in range(m)]
                plain = Backend(loaded.model, loaded.tokenizer).plain(expanded, sampling, ref_seeds)
                scores = reward_fn(expanded, [a.text for a in plain], None)
                reference_rewards = [scores[i * m : (i + 1) * m] for i in range(len(queries))]
            kl = kl_to_wrapped(
                strategy, loaded, samples, answers, prompts, reference_rewards, args.batch_size
            )
            metrics = {"name": name, **summarize(samples, prompts, 1, 0.95)}
            if kl is not None:
                metrics["kl"] = kl
            results[name] = EvalResult(metrics, samples)
            n = len(answers)
            extra[name] = {
                "model": model_name,
                "strategy": strategy,
                "tokens_per_answer": sum(a.cost.tokens for a in answers) / n,
                "forwards_per_answer": sum(a.cost.forwards for a in answers) / n,
                "seconds_per_answer": seconds / n,
            }
            print(f"{name}: {seconds:.0f} s", flush=True)
        del loaded

    add_headline(results, prompts, results["sft plain"].samples, "sft plain")
    for name, result in results.items():
        m = result.metrics
        head = m["headline"]["scores"]
        fam = m.get("scores_by_family", {})
        paired = (m.get("paired") or {}).get("difference", {})
        kl = m.get("kl")
        rows.append(
            {
                **extra[name],
                "gold": head["total"]["mean"],
                **{c: head[c]["mean"] for c in ("helpful", "honest", "harmless", "style")},
                "refuses_harmful": fam.get("harmful", {}).get("refused", {}).get("mean"),
                "over_refuses_benign": fam.get("benign", {}).get("refused", {}).get("mean"),
                "hallucinates_unknown": fam.get("unknown", {}).get("hallucinated", {}).get("mean"),
                "vs_sft": paired.get("mean"),
                "vs_sft_ci": [paired.get("lower"), paired.get("upper")],
                "kl": kl.get("mean") if kl else None,
                "kl_bound": kl.get("bound") if kl else None,
            }
        )
    write_outputs(out, rows, results, args)


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    return (
        f"{value:+.{digits}f}"
        if isinstance(value, float) and digits == 3
        else f"{value:.{digits}f}"
    )


def write_outputs(
    out: Path, rows: list[dict[str, Any]], results: dict[str, EvalResult], args: Any
) -> None:
    head = (
        "| model | strategy | gold | helpful | honest | harmless | refuses harmful | over-refuses"
        " benign | hallucinates unknown | Δ gold vs SFT [95% CI] | KL to wrapped | tokens / answer"
        " | forwards / answer | s / answer |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        ci = r["vs_sft_ci"]
        delta = "—" if r["vs_sft"] is None else f"{r['vs_sft']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        kl = "—" if r["kl"] is None else f"{r['kl']:.2f}"
        if r["kl_bound"] is not None:
            kl += f" (bound {r['kl_bound']:.2f})"
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['gold']:.3f} | {r['helpful']:.3f} | "
            f"{r['honest']:.3f} | {r['harmless']:.3f} | {_rate(r['refuses_harmful'])} | "
            f"{_rate(r['over_refuses_benign'])} | {_rate(r['hallucinates_unknown'])} | {delta} | "
            f"{kl} | {r['tokens_per_answer']:.1f} | {r['forwards_per_answer']:.1f} | "
            f"{r['seconds_per_answer']:.3f} |"
        )
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    atomic_write_text(
        out / "results.json", json.dumps({"settings": vars(args), "rows": rows}, indent=2)
    )
    write_jsonl(
        out / "samples.jsonl",
        (
            {"name": name, "prompt_index": s.prompt_index, "text": s.generation.text,
             "scores": s.scores}
            for name, result in results.items() for s in result.samples
        ),
    )  # fmt: skip
    plot(out / "gold_vs_seconds.png", rows)
    print("\n".join(lines))


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, marker in (("base", "o"), ("sft", "s"), ("dpo", "*")):
        mine = [r for r in rows if r["model"] == model]
        ax.scatter([r["seconds_per_answer"] for r in mine], [r["gold"] for r in mine],
                   marker=marker, label=model, s=60 if model != "dpo" else 140)  # fmt: skip
        for r in mine:
            ax.annotate(r["strategy"], (r["seconds_per_answer"], r["gold"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("seconds per answer (2 CPU cores, log scale)")
    ax.set_ylabel("heldout gold (headline)")
    ax.set_title("In-context strategies against fine-tuning, lab")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
