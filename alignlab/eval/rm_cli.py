"""`alignlab rm-eval --rm PATH [--rm PATH ...] --pairs FILE [--aggregate mean|min|lcb|uwo]`.

Scores held-out preference pairs (TRL preference format, strings or message lists) with one
reward model or an ensemble and reports: pairwise accuracy, ECE of σ(r_w - r_l) (top-label
bins over [0.5, 1], `alignlab.eval.reward_eval`), mean reward margin and chosen / rejected
means, the Spearman correlation of reward with response length over all 2N responses (the
length-bias alarm), and, when the rows carry gold scores (`--gold gold_chosen,gold_rejected`,
the lab's columns by default when present), the Spearman correlation of reward with gold.
`--out FILE` writes the report as JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from alignlab.config import ArgumentParser
from alignlab.data.schema import DataError, parse_examples
from alignlab.data.sources import load_records
from alignlab.eval.reward_eval import evaluate_pairs, gold_correlation
from alignlab.fileio import atomic_write_text
from alignlab.models.folders import check_model_source
from alignlab.models.reward_ensemble import AGGREGATES, RewardScorer


def _response_text(response: str | list[dict[str, Any]]) -> str:
    if isinstance(response, str):
        return response
    return "\n".join(m["content"] for m in response if m["role"] == "assistant")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def evaluate_reward_models(
    rm_paths: list[str],
    pairs_path: str,
    aggregate: str = "mean",
    k: float = 1.0,
    gold: tuple[str, str] | None = None,
    batch_size: int = 16,
    max_length: int = 0,
    n_bins: int = 10,
    max_pairs: int = 0,
) -> dict[str, Any]:
    """The rm-eval report (module docstring) as a dict."""
    records = load_records(pairs_path, max_records=max_pairs)
    _, examples = parse_examples(records, "preference")
    if not examples:
        raise DataError("no preference pairs", pairs_path)
    scorer = RewardScorer(
        rm_paths, aggregate=aggregate, k=k, batch_size=batch_size, max_length=max_length
    )
    prompts = [e.prompt if e.prompt is not None else "" for e in examples]
    chosen = scorer.score_batch(prompts, [e.chosen for e in examples])
    rejected = scorer.score_batch(prompts, [e.rejected for e in examples])
    report: dict[str, Any] = {
        "reward_models": [str(p) for p in rm_paths],
        "aggregate": aggregate,
        "pairs_file": str(pairs_path),
        **evaluate_pairs(chosen, rejected, n_bins),
    }
    texts = [_response_text(e.chosen) for e in examples] + [
        _response_text(e.rejected) for e in examples
    ]
    lengths = [len(ids) for ids in scorer.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if gold is None and all({"gold_chosen", "gold_rejected"} <= set(r.data) for r in records):
        gold = ("gold_chosen", "gold_rejected")
    gold_scores = None
    if gold is not None:
        gold_scores = [float(r.data[gold[0]]) for r in records] + [
            float(r.data[gold[1]]) for r in records
        ]
    report.update(gold_correlation(chosen + rejected, gold_scores, lengths))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="alignlab rm-eval",
        description="Evaluate reward model(s) on held-out preference pairs.",
    )
    parser.add_argument("--rm", action="append", required=True, help="reward-model folder")
    parser.add_argument("--pairs", required=True, help="preference pairs (JSONL, JSON, ...)")
    parser.add_argument("--aggregate", default="mean", choices=AGGREGATES)
    parser.add_argument("--k", type=float, default=1.0, help="penalty of lcb / uwo")
    parser.add_argument(
        "--gold", default="", help="two columns of gold scores: CHOSEN,REJECTED (optional)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=0, help="0 = no limit")
    parser.add_argument("--bins", type=int, default=10, help="ECE bins")
    parser.add_argument("--max-pairs", type=int, default=0, help="0 = all")
    parser.add_argument("--out", default="", help="write the report here as JSON")
    args = parser.parse_args(argv)
    for path in args.rm:
        check_model_source(path, "--rm", tokenizer=True, reward_model=True)
    gold = None
    if args.gold:
        parts = args.gold.split(",")
        if len(parts) != 2:
            parser.error("--gold takes two column names: CHOSEN,REJECTED")
        gold = (parts[0], parts[1])
    report = evaluate_reward_models(
        args.rm, args.pairs, args.aggregate, args.k, gold, args.batch_size,
        args.max_length, args.bins, args.max_pairs,
    )  # fmt: skip
    for key in (
        "pairs", "accuracy", "ece", "margin", "chosen_mean", "rejected_mean",
        "spearman_gold", "pearson_gold", "length_spearman",
    ):  # fmt: skip
        if key in report:
            value = report[key]
            print(f"{key:16s} {value:.4f}" if isinstance(value, float) else f"{key:16s} {value}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(_json_safe(report), indent=2) + "\n")
        print(f"report: {args.out}")
    return 0
