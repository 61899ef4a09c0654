"""What the lab's model size can reach: SFT against oracle-SFT, greedy against sampled decoding,
best-of-n with gold as the scorer, and the oracle, per prompt family, paired on the same prompts.

1. lab build (cached; `size=medium` picks the larger lab) and the lab's SFT stage on its demonstrations
   (the demo's folder by default, so a `make demo` first saves its time);
2. oracle-SFT: the same SFT stage (preset sft_lab, same prompts, same count) on the oracle's
   answers to those prompts (`alignlab.lab.oracle_sft`);
3. on heldout prompts, for SFT and oracle-SFT: greedy decoding (temperature 0), and `--samples`
   responses per prompt at temperature 1 with the harness's per-prompt seeds (sample k of a
   prompt is drawn with the same random numbers by both models). Sampled gold is the mean of a
   prompt's samples; best-of-n (n in `--bon`) answers each prompt with the gold-best of its
   first n samples (the first on ties): the pick a best-of-n with gold as the reward makes,
   drawn once for every n, so the best-of-n curve of a prompt never falls with n;
4. the oracle's own answers scored the same way, and paired comparisons (mean per-prompt
   difference, paired t and bootstrap intervals, `alignlab.eval.paired`) that decompose SFT's
   distance to the oracle, overall and per family:

       oracle - SFT sampled = (oracle-SFT sampled - SFT sampled)         demonstrations
                            + (oracle-SFT greedy - oracle-SFT sampled)   sampling temperature
                            + (oracle - oracle-SFT greedy)               capacity

   (the other order, temperature on SFT then demonstrations at greedy, is reported beside it),
   and how much of the capacity term best-of-n with a perfect verifier recovers.

Every decoding of every model is cached in <out>/samples/ (keyed by the model file and the
settings): a rerun only re-scores and re-tabulates.

    python benchmarks/lab_ceiling.py                              # 400 heldout prompts, 64 samples
    python benchmarks/lab_ceiling.py --eval-prompts 100 --samples 4 --bon 1,4   # a timing probe
    python benchmarks/lab_ceiling.py size=medium                  # the larger lab (runs/lab-medium)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignlab.config import load_config
from alignlab.eval.harness import (
    EvalOptions,
    EvalPrompt,
    EvalResult,
    EvalSample,
    evaluate_model,
    load_for_eval,
    prompt_families,
    score_samples,
    summarize,
)
from alignlab.eval.paired import paired_comparison
from alignlab.eval.report import format_comparison, format_value
from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.lab.build import DEFAULT_SIZE, LabBuildConfig, build
from alignlab.lab.evaluate import gold_scorer, gold_total, lab_prompts, oracle_result
from alignlab.lab.oracle_sft import oracle_sft_stage
from alignlab.lab.pipeline import cached, sft_stage
from alignlab.models.generation import Generation
from alignlab.rl.sample_filter import best_per_prompt

MODELS = ("sft", "oracle-sft")
# (label, model, baseline): the steps of the decomposition and the sampling ceiling
STEPS = (
    ("whole gap", "oracle", "sft sampled"),
    ("demonstrations (sampled)", "oracle-sft sampled", "sft sampled"),
    ("temperature (oracle-SFT)", "oracle-sft greedy", "oracle-sft sampled"),
    ("capacity (oracle-SFT greedy)", "oracle", "oracle-sft greedy"),
    ("temperature (SFT)", "sft greedy", "sft sampled"),
    ("demonstrations (greedy)", "oracle-sft greedy", "sft greedy"),
)


# --- decoding, cached ---


def _record(sample: EvalSample) -> dict[str, Any]:
    g = sample.generation
    return {
        "prompt_index": sample.prompt_index,
        "sample_index": sample.sample_index,
        "response_ids": g.response_ids,
        "text": g.text,
        "finished": g.finished,
    }


def _sample(row: dict[str, Any]) -> EvalSample:
    generation = Generation("", [], row["response_ids"], row["text"], row["finished"])
    return EvalSample(row["prompt_index"], row["sample_index"], generation)


def decoded(
    model_dir: Path,
    prompts: Sequence[EvalPrompt],
    scorer: Any,
    folder: Path,
    num_samples: int,
    temperature: float,
    args: argparse.Namespace,
) -> tuple[list[EvalSample], float]:
    """`num_samples` responses per prompt (prompt-major), scored by `scorer`, and the seconds
    the decoding took (0 when cached). The samples are cached in `folder`, keyed by the model
    file, the prompts and the settings; cached samples are re-scored (gold is cheap)."""
    output = folder / "samples.jsonl"
    seconds = 0.0

    def make() -> Path:
        nonlocal seconds
        start = time.perf_counter()
        policy = load_for_eval(model_dir)
        options = EvalOptions(
            num_samples=num_samples, max_new_tokens=args.max_new_tokens,
            temperature=temperature, batch_size=args.batch_size, seed=args.seed,
        )  # fmt: skip
        result = evaluate_model(policy, prompts, options=options)
        write_jsonl(output, (_record(s) for s in result.samples))
        seconds = time.perf_counter() - start
        print(f"{folder.name}: {len(result.samples)} responses in {seconds:.0f} s", flush=True)
        return output

    model_key = (model_dir / "model.safetensors").stat().st_mtime_ns
    settings = (num_samples, temperature, args.max_new_tokens, args.seed, args.eval_split)
    made_from = json.dumps([str(model_dir), model_key, [p.prompt for p in prompts], *settings])
    key = hashlib.sha256(made_from.encode()).hexdigest()[:16]
    cached(folder, key, output, make)
    samples = [_sample(json.loads(line)) for line in output.read_text().splitlines()]
    score_samples(samples, prompts, scorer, None)
    return samples, seconds


def best_of_first(samples: Sequence[EvalSample], per_prompt: int, n: int) -> list[EvalSample]:
    """Each prompt's gold-best among its first `n` of `per_prompt` samples (prompt-major)."""
    first = [s for s in samples if s.sample_index < n]
    return [first[i] for i in best_per_prompt([gold_total(s) for s in first], n)]


# --- tables ---


def _gold(metrics: dict[str, Any], family: str | None, key: str = "total") -> Any:
    if family is None:
        return metrics["scores"][key]
    return metrics["scores_by_family"].get(family, {}).get(key)


def means_table(metrics: dict[str, dict[str, Any]], families: Sequence[str]) -> str:
    """Gold mean ± 95% t half-width per family (rows) and model/decoding (columns)."""
    names = list(metrics)
    lines = ["| family | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for family in [*families, None]:
        cells = [format_value(_gold(metrics[name], family)) for name in names]
        lines.append(f"| {family or '**all**'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def steps_table(comparisons: dict[str, dict[str, Any]], families: Sequence[str]) -> str:
    """Paired Δ [95% t interval] (`*`: t and bootstrap intervals both exclude 0) per family."""
    labels = list(comparisons)
    lines = ["| family | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for family in [*families, None]:
        cells = []
        for label in labels:
            comparison = comparisons[label]
            part = comparison if family is None else comparison["by_family"].get(family)
            cells.append(format_comparison(part, "marked"))
        lines.append(f"| {family or '**all**'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shares_table(comparisons: dict[str, dict[str, Any]], families: Sequence[str]) -> str:
    """Each step of the decomposition as a share of the whole gap, per family."""
    parts = ("demonstrations (sampled)", "temperature (oracle-SFT)", "capacity (oracle-SFT greedy)")
    lines = ["| family | gap | " + " | ".join(parts) + " |", "|---" * (len(parts) + 2) + "|"]
    for family in [*families, None]:

        def mean(label: str, family: str | None = family) -> float:
            comparison = comparisons[label]
            part = comparison if family is None else comparison["by_family"][family]
            return part["difference"]["mean"]

        gap = mean("whole gap")
        shares = [f"{mean(p) / gap:.0%}" if abs(gap) > 1e-9 else "n/a" for p in parts]
        lines.append(f"| {family or '**all**'} | {gap:.3f} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "build_options", nargs="*", metavar="key=value",
        help="lab build options, as `alignlab lab build` takes them (size=medium: the larger lab)",
    )  # fmt: skip
    parser.add_argument("--out", help="default: runs/lab_ceiling (another size: ...-SIZE)")
    parser.add_argument("--lab", help="lab build cache; default: runs/lab (another size: ...-SIZE)")
    parser.add_argument("--sft", help="SFT run folder; default: the lab build's, LAB/sft")
    parser.add_argument(
        "--eval-prompts", type=int, default=400,
        help="heldout prompts (400 x 64 samples: ~30 min on 2 shared cores)",
    )  # fmt: skip
    parser.add_argument(
        "--eval-split", default="heldout", choices=("heldout", "valid"),
        help="heldout for reported numbers, valid to choose settings",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=64, help="temperature-1 samples a prompt")
    parser.add_argument("--bon", default="1,4,16,64", help="best-of-n sizes, each <= --samples")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=256, help="generation batch size")
    parser.add_argument("--seed", type=int, default=0, help="evaluation (sampling) seed")
    args = parser.parse_args()
    bon = [int(n) for n in args.bon.split(",") if n]
    if any(n < 1 or n > args.samples for n in bon):
        parser.error(f"--bon {args.bon}: every n must be in [1, --samples={args.samples}]")
    # another size builds beside the default one (runs/lab-SIZE), never over it
    build_cfg = load_config(LabBuildConfig, None, args.build_options)
    suffix = "" if build_cfg.size == DEFAULT_SIZE else f"-{build_cfg.size}"
    out = Path(args.out or f"runs/lab_ceiling{suffix}")
    build_cfg.out = args.lab = args.lab or build_cfg.out
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        return result

    # --- the two SFT models: the lab's demonstrations and the oracle's ---
    lab = timed("build", lambda: build(build_cfg))
    folders = {
        "sft": timed("sft", lambda: sft_stage(lab, args.sft)),
        "oracle-sft": timed("oracle-sft", lambda: oracle_sft_stage(lab, out / "oracle_sft")),
    }

    # --- greedy and sampled decodings, best-of-n picks, the oracle ---
    prompts = lab_prompts(lab.world, args.eval_split, args.eval_prompts)
    scorer = gold_scorer(lab.world)
    families = sorted(set(prompt_families(prompts).values()))
    results: dict[str, EvalResult] = {}
    for name in MODELS:
        greedy, seconds = decoded(
            folders[name], prompts, scorer, out / "samples" / f"{name}-greedy", 1, 0.0, args
        )
        timings[f"{name} greedy"] = round(seconds, 1)
        pool, seconds = decoded(
            folders[name], prompts, scorer, out / "samples" / f"{name}-sampled-{args.samples}",
            args.samples, 1.0, args,
        )  # fmt: skip
        timings[f"{name} sampled x{args.samples}"] = round(seconds, 1)
        results[f"{name} greedy"] = EvalResult(summarize(greedy, prompts, 1, 0.95), greedy)
        results[f"{name} sampled"] = EvalResult(summarize(pool, prompts, args.samples, 0.95), pool)
        for n in bon:
            picks = best_of_first(pool, args.samples, n)
            results[f"{name} best-of-{n}"] = EvalResult(summarize(picks, prompts, 1, 0.95), picks)
    tokenizer = load_for_eval(folders["sft"]).tokenizer
    results["oracle"] = oracle_result(lab.world, prompts, tokenizer)

    # --- paired comparisons on the same prompts ---
    family_of = prompt_families(prompts)

    def compare(model: str, baseline: str) -> dict[str, Any]:
        return paired_comparison(
            results[model].samples, results[baseline].samples, gold_total, family_of,
            baseline=baseline, by="scores.total",
        )  # fmt: skip

    steps = {label: compare(model, baseline) for label, model, baseline in STEPS}
    ceiling = {}
    for name in MODELS:
        for n in bon:
            ceiling[f"{name} best-of-{n} - sampled"] = compare(
                f"{name} best-of-{n}", f"{name} sampled"
            )
        ceiling[f"oracle - {name} best-of-{bon[-1]}"] = compare(
            "oracle", f"{name} best-of-{bon[-1]}"
        )

    # --- report ---
    metrics = {name: result.metrics for name, result in results.items()}
    arithmetic = {
        name: _gold(m, "arithmetic", "correct")
        for name, m in metrics.items()
        if "arithmetic" in families
    }
    summary = {
        "args": vars(args),
        "lab": {"key": lab.manifest["key"], "config": lab.manifest["config"],
                "build_seconds": lab.manifest.get("build_seconds")},
        "models": {name: str(path) for name, path in folders.items()},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "timings_s": timings,
        "metrics": {name: {k: m[k] for k in ("scores", "scores_by_family", "length")} for name, m in metrics.items()},
        "steps": steps,
        "ceiling": ceiling,
        "arithmetic_correct": arithmetic,
    }  # fmt: skip
    report = "\n\n".join(
        [
            f"# The ceiling of the lab's size ({build_cfg.size}), {len(prompts)} {args.eval_split} "
            f"prompts, {args.samples} samples a prompt",
            "## Gold per family (mean ± 95% t half-width)",
            means_table(metrics, families),
            "## Decomposition of SFT's gap to the oracle (paired Δ [95% t], * separated)",
            steps_table(steps, families),
            "## Shares of the gap (oracle-SFT path)",
            shares_table(steps, families),
            "## Best-of-n with gold as the scorer (paired Δ [95% t], * separated)",
            steps_table(ceiling, families),
            "## Arithmetic: rate of correct answers",
            "\n".join(f"- {name}: {format_value(rate)}" for name, rate in arithmetic.items()),
        ]
    )
    atomic_write_text(out / "report.md", report + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(report)
    print(json.dumps(timings, indent=2))
    print(f"done in {time.perf_counter() - start:.0f} s -> {out / 'report.md'}")


if __name__ == "__main__":
    main()
