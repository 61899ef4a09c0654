"""LocalJudge throughput: pairwise verdicts per second at real vocabulary sizes.

A verdict is read from one forward pass's last-position logits (`logits_to_keep=1`, so the
output projection runs for one position, not the whole prompt), conversations batched by
length, at each of `--batch-sizes`; batch 1 is the naive one-conversation-at-a-time loop.
Against them, on the same conversations and model: what a user of plain transformers writes, `generate(max_new_tokens=1,
output_scores=True)` per batch, then the verdict tokens' probabilities from the scores.
Each way's time is the median of 3 runs after an untimed one. Every way gives the same verdict
probabilities (checked, to a tolerance from the dtype);
only the time differs. Each pair is judged in both orders (2 conversations per verdict).

Shapes: the lab body (4 layers, hidden 256) with a 32,000-token vocabulary, and a
Qwen2.5-0.5B-like model (24 layers, hidden 896, 151,936 tokens). Random weights: speed does
not depend on what the model knows. The tokenizer is a 1,000-token BPE of lab prompts, so the
prompts are real text; the model's vocabulary (its embedding and output projection) is the
shape's.

    python benchmarks/judge_speed.py                         # both shapes, 64 pairs
    python benchmarks/judge_speed.py --shapes lab32k --pairs 128 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_shapes import QWEN_05B, QWEN_VOCAB  # noqa: E402
from sft_speed import BODY  # noqa: E402

from alignlab.judges import LocalJudge  # noqa: E402
from alignlab.judges.templates import PAIR_VERDICTS  # noqa: E402
from alignlab.lab.policies import sample_candidate  # noqa: E402
from alignlab.lab.world import LabWorld  # noqa: E402
from alignlab.models.tiny import tiny_llama_config, train_tokenizer  # noqa: E402

SHAPES = {"lab32k": (BODY, 32000), "qwen0.5b": (QWEN_05B, QWEN_VOCAB)}


def conversations(judge: LocalJudge, n_pairs: int, seed: int) -> list[Any]:
    """Both orders of `n_pairs` lab (prompt, candidate, candidate) as judge conversations."""
    world, rng = LabWorld(seed=0), random.Random(seed)
    out = []
    for prompt in world.prompts("heldout", n_pairs):
        a, b = sample_candidate(prompt, rng), sample_candidate(prompt, rng)
        out.append(judge.templates.pairwise_messages(prompt.messages, a, b))
        out.append(judge.templates.pairwise_messages(prompt.messages, b, a))
    return out


def generate_probs(judge: LocalJudge, convs: list[Any], batch_size: int) -> list[list[float]]:
    """The plain-transformers way: generate one token with its scores, per left-padded batch."""
    tokenizer, model = judge.tokenizer, judge.model
    tokenizer.padding_side = "left"
    verdict_ids = judge.encode(judge.judge_text(convs[0]), PAIR_VERDICTS)[1]
    probs = []
    for start in range(0, len(convs), batch_size):
        texts = [judge.judge_text(c) for c in convs[start : start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=1, do_sample=False, output_scores=True,
                return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        logits = out.scores[0][:, verdict_ids].double()
        probs += logits.softmax(-1).tolist()
    return probs


REPEATS = 3


def timed(fn: Any) -> tuple[Any, float]:
    """fn()'s result and its median seconds over REPEATS runs after one untimed run (CPU
    kernels are set up per input shape on first use)."""
    result = fn()
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def run_shape(name: str, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import LlamaForCausalLM

    body, vocab = SHAPES[name]
    config = tiny_llama_config(vocab, **body, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    judge = LocalJudge(model, tokenizer, batch_size=args.batch_size)
    convs = conversations(judge, args.pairs, args.seed)
    rows: dict[str, Any] = {}
    probs = {}
    for size in args.batch_sizes:  # batch 1 is the one-at-a-time loop
        sized = LocalJudge(model, tokenizer, batch_size=size)
        probs[size], seconds = timed(lambda j=sized: j.verdict_probs(convs, PAIR_VERDICTS))
        rows[f"LocalJudge, batch {size}"] = seconds
    generated, seconds = timed(lambda: generate_probs(judge, convs, args.batch_size))
    rows[f"generate(max_new_tokens=1), batch {args.batch_size}"] = seconds
    batched, *others = [*probs.values(), generated]
    # fp32 logits of identical inputs: padding and batch shapes change the summation order
    # only, so probabilities agree to a few fp32 ulps of the logits' magnitude
    worst = max(
        abs(x - y)
        for other in others
        for p, q in zip(batched, other, strict=True)
        for x, y in zip(p, q, strict=True)
    )
    tokens = sum(len(judge.encode(judge.judge_text(c), PAIR_VERDICTS)[0]) for c in convs)
    params = sum(p.numel() for p in model.parameters())
    return {
        "shape": name,
        "parameters": params,
        "vocab": vocab,
        "pairs": args.pairs,
        "conversations": len(convs),
        "mean_prompt_tokens": tokens / len(convs),
        "max_probability_difference": worst,
        "seconds": rows,
        "verdicts_per_s": {k: args.pairs / v for k, v in rows.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--pairs", type=int, default=64, help="pairs judged (both orders)")
    parser.add_argument("--batch-size", type=int, default=32, help="warm-up and generate()'s")
    parser.add_argument(
        "--batch-sizes",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[1, 8, 32],
        help="LocalJudge batch sizes timed (1: one conversation at a time)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/judge_speed.json")
    args = parser.parse_args()
    world = LabWorld(seed=0)
    texts = [p.messages[0]["content"] for p in world.prompts("train", 2000)]
    tokenizer = train_tokenizer(texts, vocab_size=1000)
    results = [run_shape(s, tokenizer, args) for s in args.shapes.split(",") if s]
    print("| shape | parameters | prompt tokens | way | seconds | verdicts/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for way, seconds in r["seconds"].items():
            print(
                f"| {r['shape']} | {r['parameters'] / 1e6:.1f}M | {r['mean_prompt_tokens']:.0f} "
                f"| {way} | {seconds:.2f} | {r['verdicts_per_s'][way]:.1f} |"
            )
        print(f"| {r['shape']} | max |Δp| between ways: {r['max_probability_difference']:.2e} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
