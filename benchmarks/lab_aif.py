"""Alignment from AI feedback in the lab: every method against RLHF with bought labels.

One table, the same heldout prompts, every model compared with the lab's SFT model on the
same prompts and sampling seeds (Δ: paired difference of gold, 95% t interval):

    rlhf            the simulated human panel labels SFT samples (labels bought) -> RM -> PPO
    rlaif           the lab teacher labels the same kind of pairs -> soft-label RM -> PPO
    rlaif_direct    PPO with the teacher's 1-5 rating as the reward (no RM)
    cai             SL-CAI (revisions by the teacher + the demonstrations -> SFT of the base)
                    and RL-CAI (the teacher's labels under the lab constitution -> RM -> PPO)
    self_rewarding  the SFT model, taught to rate (EFT data: 1-5 ratings), judges its own
                    samples; best vs worst -> DPO; two rounds
    online_dpo      two rounds of sample -> simulated annotator -> DPO (Xiong et al.)
    online_dpo_ai   the same rounds labelled by the teacher (Guo et al.'s OAIF)
    almost          synthetic comparisons by model size and shots -> RM -> best-of-4
                    demonstrations -> SFT of the base -> PPO; no human label, no demonstration
                    beyond the 3 shown as examples
    almost_size     the same with the size prior alone (both bases asked with no example)

The teacher is the `size=medium feedback_share=0.3` lab build (alignlab/lab/teacher.py,
`benchmarks/lab_teacher.py` measures its agreement); ALMoST's larger model is the plain
medium build. Every PPO runs the same steps (`--ppo-steps`). Each method's labels'
agreement with gold (measured, never trained on) and the labels bought are reported beside
its gold. Writes OUT/report.md (the harness's tables and plots), OUT/aif_table.md and
OUT/summary.json.

    OMP_NUM_THREADS=2 python benchmarks/lab_aif.py                       # everything
    python benchmarks/lab_aif.py --methods rlhf,rlaif --eval-prompts 500  # a subset

Every stage is cached, so a rerun (or a run with more methods) trains only what is missing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignlab.config import load_config  # noqa: E402
from alignlab.eval.harness import prompt_families  # noqa: E402
from alignlab.eval.paired import paired_comparison  # noqa: E402
from alignlab.eval.report import markdown_table, write_report  # noqa: E402
from alignlab.fileio import atomic_write_text, write_jsonl  # noqa: E402
from alignlab.lab.build import LabArtifacts, LabBuildConfig, build  # noqa: E402
from alignlab.lab.evaluate import (  # noqa: E402
    HEADLINE,
    evaluate_lab,
    gold_total,
    in_headline,
    lab_prompts,
)
from alignlab.lab.gold import gold_score  # noqa: E402
from alignlab.lab.pipeline import feedback_stage, recipe_stage, rm_stage, sft_stage  # noqa: E402
from alignlab.lab.rewards import lab_prompt_of  # noqa: E402
from alignlab.lab.teacher import pointwise_transcript  # noqa: E402
from alignlab.recipes import RECIPES, resolve_preset  # noqa: E402
from alignlab.recipes.stages import cached, stage_key  # noqa: E402

GOLD = "alignlab.lab.rewards:gold_reward"
ANNOTATOR = "alignlab.lab.rewards:annotator_reward"
METHODS = (
    "rlhf", "rlaif", "rlaif_direct", "cai", "self_rewarding", "online_dpo", "online_dpo_ai",
    "almost", "almost_size",
)  # fmt: skip
COMMON = ["train.progress=false"]
RLHF = "RLHF (human labels -> RM -> PPO)"


class Context:
    """What every method's run needs: the builds, the SFT start, the prompts, the budgets."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        self.lab = lab = self.build(args.lab)
        self.sft = sft_stage(lab, args.sft)
        self.prompts = lab.data["prompts"]
        self.ppo = [f"train.max_steps={args.ppo_steps}", *COMMON]

    def teacher(self) -> str:
        return str(self.build(self.args.teacher, "size=medium", "feedback_share=0.3").base)

    def build(self, out: str, *options: str) -> LabArtifacts:
        """A lab build (cached), `--build` options last (a smoke test's tiny builds)."""
        return build(load_config(LabBuildConfig, None, [f"out={out}", *options, *self.args.build]))

    def pipeline(self, recipe: str, preset: str | None, overrides: Sequence[str]) -> Path:
        """Run a pipeline recipe (its own cached stages) into OUT/<recipe's folder>."""
        module_name, config_name = RECIPES[recipe]
        module = importlib.import_module(module_name)
        path = resolve_preset(preset) if preset else None
        return module.run(load_config(getattr(module, config_name), path, list(overrides)))


def red_team(ctx: Context) -> Path:
    """The harmful-family train prompts (what `alignlab lab export` writes as red_team.jsonl,
    derived here too so that a build made before that file existed serves)."""
    path = ctx.lab.out / "data" / "red_team.jsonl"
    if not path.exists():
        rows = [json.loads(line) for line in ctx.prompts.read_text().splitlines()]
        write_jsonl(path, [r for r in rows if r["family"] == "harmful"])
    return path


def judge_seed_data(ctx: Context, n: int, out: Path) -> Path:
    """Self-rewarding's seed data: `n` 1-5 rating conversations on train prompts (the paper's
    EFT data; gold-derived ratings, as its were human-ranked) and the lab's demonstrations
    (its IFT data)."""
    path = out / "seed_judge.jsonl"

    def make() -> Path:
        rng = random.Random(f"alignlab-lab/{ctx.lab.manifest['config']['seed']}/eft")
        prompts = ctx.lab.world.prompts("train", n, stream="eft")
        rows = [{"messages": pointwise_transcript(p, rng)} for p in prompts]
        demos = [json.loads(line) for line in ctx.lab.data["sft"].read_text().splitlines()]
        rows += [{"messages": d["messages"]} for d in demos]
        rng.shuffle(rows)
        write_jsonl(path, rows)
        return path

    return cached(out, stage_key("eft", n, ctx.lab.manifest["key"]), path, make)


def run_rlhf(ctx: Context) -> dict[str, Path]:
    folder = ctx.out / "rlhf"
    n = ctx.args.label_prompts
    feedback = feedback_stage(ctx.lab, ctx.sft, folder / "feedback", n, k=ctx.args.k)
    rm = rm_stage(ctx.sft, feedback["rm_pairs"], folder / "rm", COMMON)
    args = [f"model.path={ctx.sft}", f"data.path={ctx.prompts}", f"rl.reward={rm}", *ctx.ppo]
    return {
        "RLHF (human labels -> RM -> PPO)": recipe_stage("ppo", "ppo_lab", args, folder / "ppo")
    }


def _rlaif(ctx: Context, mode: str) -> Path:
    folder = "rlaif" if mode == "distilled" else "rlaif_direct"
    return ctx.pipeline("rlaif", "rlaif_lab", [
        f"model.path={ctx.sft}", f"data.path={ctx.prompts}", f"labeller.judge={ctx.teacher()}",
        f"mode={mode}", f"label_prompts={ctx.args.label_prompts}",
        f"samples_per_prompt={ctx.args.k}", f"output_dir={ctx.out / folder}",
        f"rl_overrides={json.dumps(ctx.ppo)}", f"rm_overrides={json.dumps(COMMON)}",
    ])  # fmt: skip


def run_rlaif(ctx: Context) -> dict[str, Path]:
    return {"RLAIF distilled (teacher labels -> RM -> PPO)": _rlaif(ctx, "distilled")}


def run_rlaif_direct(ctx: Context) -> dict[str, Path]:
    return {"RLAIF direct (teacher's rating as reward, PPO)": _rlaif(ctx, "direct")}


def run_cai(ctx: Context) -> dict[str, Path]:
    out = ctx.out / "cai"
    teacher = ctx.teacher()
    final = ctx.pipeline("cai", "cai_lab", [
        f"model.path={ctx.sft}", f"data.path={red_team(ctx)}", f"reviser={teacher}",
        f"feedback.judge={teacher}", f"sl_model={ctx.lab.base}",
        f"helpful_data={ctx.lab.data['sft']}", f"helpful_prompts={ctx.prompts}",
        f"output_dir={out}", f"final_overrides={json.dumps(ctx.ppo)}",
        f"max_helpful_prompts={ctx.args.label_prompts}",
        f"sft_overrides={json.dumps(COMMON)}", f"rm_overrides={json.dumps(COMMON)}",
    ])  # fmt: skip
    return {"SL-CAI (revisions + demos -> SFT)": out / "sl_sft" / "final",
            "RL-CAI (SL-CAI -> teacher labels -> RM -> PPO)": final}  # fmt: skip


def run_self_rewarding(ctx: Context) -> dict[str, Path]:
    out = ctx.out / "self_rewarding"
    templates = out / "judge_templates.yaml"  # the 1-5 question the EFT data asks
    if not templates.exists():
        atomic_write_text(templates, 'scale: "1-5"\n')
    final = ctx.pipeline("self_rewarding", "self_rewarding_lab", [
        f"model.path={ctx.sft}", f"data.path={ctx.prompts}", "rounds=2",
        f"prompts_per_round={ctx.args.round_prompts}",
        f"seed_judge_data={judge_seed_data(ctx, ctx.args.eft, out / 'eft')}",
        # a rating conversation is up to ~300 tokens, past sft_lab's 256
        "sft_preset=sft_lab", f"sft_overrides={json.dumps([*COMMON, 'data.max_length=512'])}",
        f"judge_templates={templates}", f"output_dir={out}",
        f"dpo_overrides={json.dumps(COMMON)}",
    ])  # fmt: skip
    # M1 beside M3: what the seed stage (EFT + IFT from SFT) did before any self-reward
    return {"self-rewarding M1 (seed: EFT + IFT)": out / "seed_sft" / "final",
            "self-rewarding (2 rounds)": final}  # fmt: skip


def _online_dpo(ctx: Context, folder: str, labeller: list[str]) -> Path:
    return ctx.pipeline("online_dpo", "online_dpo_lab", [
        f"model.path={ctx.sft}", f"data.path={ctx.prompts}", "rounds=2",
        f"prompts_per_round={ctx.args.round_prompts}",
        f"output_dir={ctx.out / folder}", f"dpo_overrides={json.dumps(COMMON)}", *labeller,
    ])  # fmt: skip


def run_online_dpo(ctx: Context) -> dict[str, Path]:
    final = _online_dpo(
        ctx, "online_dpo", ["labeller.source=reward", f"labeller.reward={ANNOTATOR}"]
    )
    return {"online DPO (simulated annotator, 2 rounds)": final}


def run_online_dpo_ai(ctx: Context) -> dict[str, Path]:
    labeller = ["labeller.source=judge", f"labeller.judge={ctx.teacher()}",
                "labeller.judge_batch_size=32"]  # fmt: skip
    return {"online DPO (teacher labels, 2 rounds)": _online_dpo(ctx, "online_dpo_ai", labeller)}


def _almost(ctx: Context, folder: str, shots: Sequence[tuple[str, int]]) -> Path:
    """ALMoST with generators (size, shots), the prior ranking them by size, then shots."""
    paths = {"medium": ctx.build(ctx.args.medium, "size=medium").base, "small": ctx.lab.base}
    generators = [
        {"name": f"{size}-{n}shot", "path": str(paths[size]), "shots": n} for size, n in shots
    ]
    return ctx.pipeline("almost", "almost_lab", [
        f"model.path={ctx.lab.base}", f"data.path={ctx.prompts}", f"demos={ctx.lab.data['sft']}",
        f"generators={json.dumps(generators)}", f"output_dir={ctx.out / folder}",
        f"comparison_prompts={ctx.args.label_prompts}", f"rmsp_prompts={ctx.args.label_prompts}",
        f"ppo_overrides={json.dumps(ctx.ppo)}", f"rm_overrides={json.dumps(COMMON)}",
        f"sft_overrides={json.dumps(COMMON)}",
    ])  # fmt: skip


def run_almost(ctx: Context) -> dict[str, Path]:
    shots = [("medium", 3), ("small", 3), ("small", 1), ("small", 0)]  # the preset's prior
    final = _almost(ctx, "almost", shots)
    return {"ALMoST-SFT (synthetic, from the base)": ctx.out / "almost" / "sft" / "final",
            "ALMoST-PPO": final}  # fmt: skip


def run_almost_size(ctx: Context) -> dict[str, Path]:
    """The size prior alone: both models asked with no demonstration."""
    final = _almost(ctx, "almost_size", [("medium", 0), ("small", 0)])
    return {"ALMoST-SFT, size prior only (0 shots)": ctx.out / "almost_size" / "sft" / "final",
            "ALMoST-PPO, size prior only (0 shots)": final}  # fmt: skip


RUNS: dict[str, Callable[[Context], dict[str, Path]]] = {
    name: globals()[f"run_{name}"] for name in METHODS
}


def label_records(out: Path) -> dict[str, Any]:
    """Every labels statistics record the methods' folders hold (stats.json): labels bought
    and agreement with gold, per family where the recipe measured it; ALMoST's synthetic
    pairs, which no recipe scores, are scored here (`pair_file_agreement`)."""
    found: dict[str, Any] = {}
    for path in sorted(out.rglob("stats.json")):
        row = json.loads(path.read_text())
        keys = ("gold_agreement", "labels_bought", "human_labels", "comparisons", "pairs")
        kept = {k: row[k] for k in keys if k in row}
        where = str(path.relative_to(out).parent)
        if where in ("almost/comparisons", "almost_size/comparisons"):
            kept["gold_agreement"] = pair_file_agreement(path.parent / "pairs.jsonl")
        if "gold_agreement" in kept or "labels_bought" in kept:
            found[where] = kept
    return found


def pair_file_agreement(path: Path) -> dict[str, dict[str, float]]:
    """How often a pairs file's `chosen` is the gold-better side, over pairs whose gold
    differs, overall and per family (the layout of `alignlab.aif.label_agreement`)."""
    hits: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        prompt = lab_prompt_of(row["prompt"], {})
        chosen, rejected = (gold_score(prompt, row[side][-1]["content"]).total
                            for side in ("chosen", "rejected"))  # fmt: skip
        if chosen != rejected:
            for group in ("all", prompt.family):
                hits.setdefault(group, []).append(float(chosen > rejected))
    return {g: {"agreement": sum(v) / len(v), "pairs": len(v)} for g, v in sorted(hits.items())}


def agreement_cell(value: Any) -> str:
    if isinstance(value, dict) and "all" in value:
        worst = min(
            ((f, v["agreement"]) for f, v in value.items() if f != "all"),
            key=lambda fv: fv[1], default=None,
        )  # fmt: skip
        cell = f"{value['all']['agreement']:.3f} ({value['all']['pairs']} pairs)"
        return cell + (f"; lowest {worst[0]} {worst[1]:.3f}" if worst else "")
    return f"{value:.3f}" if isinstance(value, float) else "—"


def interval(d: dict[str, float]) -> str:
    star = " *" if d["lower"] > 0 or d["upper"] < 0 else ""
    return f"{d['mean']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}]{star}"


def paired(samples: list, baseline: list, key: str, families: dict | None = None) -> dict:
    score = gold_total if key == "total" else (lambda s: float(s.scores[key]))
    return paired_comparison(samples, baseline, score, families)


def aif_table(
    results: dict[str, Any], prompts: list, labels: dict[str, dict[str, Any]], command: str
) -> str:
    """The issue's table: gold and each component's paired Δ to SFT over the headline
    families (`*`: the 95% t interval excludes 0), harmful refusal and benign over-refusal,
    KL; then each method against RLHF per family; then the labels."""
    families = prompt_families(prompts)
    headline = {i for i, f in families.items() if in_headline(f)}
    sft = [s for s in results["SFT"].samples if s.prompt_index in headline]
    lines = [
        f"Command: `{command}`",
        "",
        "| method | heldout gold | Δ gold | Δ helpful | Δ honest | Δ harmless | refuses harmful "
        "| over-refuses benign | KL to SFT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        m = result.metrics
        kept = [s for s in result.samples if s.prompt_index in headline]
        cells = ["0"] * 4 if name == "SFT" else [
            interval(paired(kept, sft, key)["difference"])
            for key in ("total", "helpful", "honest", "harmless")
        ]  # fmt: skip
        rate = {f: m["scores_by_family"].get(f, {}).get("refused", {}).get("mean")
                for f in ("harmful", "benign")}  # fmt: skip
        gold = m["headline"]["scores"]["total"]["mean"]
        kl = (m.get("kl") or {}).get("mean") or 0.0
        lines.append(
            f"| {name} | {gold:.3f} | {' | '.join(cells)} | {rate['harmful']:.3f} | "
            f"{rate['benign']:.3f} | {kl:.2f} |"
        )
    if RLHF in results:
        names = [n for n in results if n not in ("SFT", RLHF)]
        fams = sorted(set(families.values()))
        lines += ["", f"Against {RLHF}, paired per family (gold Δ, 95% t interval):", ""]
        lines += ["| method | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
        rlhf = results[RLHF].samples
        for name in names:
            by_family = paired(results[name].samples, rlhf, "total", families)["by_family"]
            row = [interval(by_family[f]["difference"]) if f in by_family else "—" for f in fams]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", "| labels | bought | agreement with gold |", "|---|---|---|"]
    for where, record in labels.items():
        bought = record.get("labels_bought", record.get("human_labels", "—"))
        lines.append(f"| {where} | {bought} | {agreement_cell(record.get('gold_agreement'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/lab_aif")
    parser.add_argument("--lab", default="runs/lab", help="the lab build (small)")
    parser.add_argument("--teacher", default="runs/lab-teacher", help="the teacher's build")
    parser.add_argument("--medium", default="runs/lab-medium", help="ALMoST's larger model")
    parser.add_argument("--sft", help="SFT run folder; default: the lab build's, LAB/sft")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--label-prompts", type=int, default=1000, help="prompts labelled")
    parser.add_argument("--k", type=int, default=4, help="samples per labelled prompt")
    parser.add_argument(
        "--round-prompts", type=int, default=1000, help="online/self-rewarding prompts per round"
    )
    parser.add_argument("--eft", type=int, default=2000, help="self-rewarding's rating rows")
    parser.add_argument("--ppo-steps", type=int, default=80)
    parser.add_argument("--eval-prompts", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument(
        "--build", action="append", default=[], metavar="KEY=VALUE",
        help="a lab build option of every build (lab, teacher, medium; e.g. a smoke test's)",
    )  # fmt: skip
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in RUNS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    out = Path(args.out)
    start = time.perf_counter()

    ctx = Context(args)
    lab, sft = ctx.lab, ctx.sft
    models: dict[str, Path] = {"SFT": sft}
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    for method in methods:
        t = time.perf_counter()
        try:
            models.update(RUNS[method](ctx))
        except Exception as error:  # one broken method must not cost the others' numbers
            traceback.print_exc()
            errors[method] = f"{type(error).__name__}: {error}"
        timings[method] = round(time.perf_counter() - t, 1)
        print(f"{method}: {timings[method]:.0f} s", flush=True)

    t = time.perf_counter()
    results = evaluate_lab(
        lab.world, models, ref=sft, n_prompts=args.eval_prompts, batch_size=args.batch_size
    )
    timings["evaluation"] = round(time.perf_counter() - t, 1)
    paths = write_report(
        results, out, title="Alignment from AI feedback, from the same SFT model",
        table_keys=HEADLINE,
    )  # fmt: skip
    labels = label_records(out)
    prompts = lab_prompts(lab.world, "heldout", args.eval_prompts)  # evaluate_lab's
    trained = {k: v for k, v in results.items() if k != "oracle"}
    table = aif_table(trained, prompts, labels, command)
    atomic_write_text(out / "aif_table.md", table)
    summary = {"args": vars(args), "timings_s": timings, "errors": errors, "labels": labels,
               "models": {k: str(v) for k, v in models.items()}}  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(markdown_table(results, table_keys=HEADLINE))
    print(table)
    print(f"report: {paths['markdown']}; done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
