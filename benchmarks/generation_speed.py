"""Rollout generation throughput: alignlab's `rollout` against a plain HF `generate` loop.

Same model (the SFT benchmark's Llama body), same prompts (8 prompts x 4 samples = 32
sequences, 16-word prompts), same sampling (temperature 1, no top-p), same max new tokens, both stopping at EOS (the
model is random, so few responses end early; throughput counts the tokens actually
generated). The HF side is what a
hand-written RL loop does: left-pad, `model.generate(do_sample=True)` in one batch, then a
forward over prompt + response for the sampled tokens' log-probs (which RL needs). alignlab's
`alignlab.rl.rollout.rollout` does the same through `alignlab.models.generation.generate`
(length-sorted batches, KV cache) and scores the responses with `TokenLogProbs` (chunked
log-probs, no full-vocabulary log-softmax). Reported: new tokens per second over the whole
rollout (sampling + log-probs) and the sampling part alone, median of --repeats runs.

    python benchmarks/generation_speed.py                     # tiny and realistic shapes
    python benchmarks/generation_speed.py --shapes realistic --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rl_speed import SHAPES, assets  # noqa: E402 - benchmarks/ is not a package

PROMPTS, SAMPLES = 8, 4


def hf_rollout(model, tokenizer, prompts: list[str], new: int) -> tuple[float, float, int]:  # noqa: ANN001
    """(total s, sampling s, new tokens) of HF generate + a log-prob forward, one batch."""
    import torch

    tokenizer.padding_side = "left"
    start = time.perf_counter()
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
            max_new_tokens=new, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        sampled = time.perf_counter()
        width = out.shape[1] - batch["input_ids"].shape[1]
        response = out[:, -width:]
        # tokens after the first EOS are padding
        done = (response == tokenizer.eos_token_id).int().cumsum(1)
        keep = (done == 0) | ((done == 1) & (response == tokenizer.eos_token_id))
        mask = torch.cat([batch["attention_mask"], keep.long()], 1)
        logits = model(input_ids=out, attention_mask=mask).logits[:, -width - 1 : -1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, response[..., None])[..., 0]
        (logps * keep).sum().item()
    return time.perf_counter() - start, sampled - start, int(keep.sum())


def alignlab_rollout(model, tokenizer, prompts: list[str], new: int) -> tuple[float, float, int]:  # noqa: ANN001
    from alignlab.models import generation
    from alignlab.rl.rollout import rollout

    clock: dict[str, float] = {}
    original = generation.generate

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = original(*args, **kwargs)
        clock["sampled"] = time.perf_counter()
        return result

    import alignlab.rl.rollout as rollout_module

    rollout_module.generate = timed
    try:
        start = time.perf_counter()
        roll = rollout(model, tokenizer, prompts, 1, new, temperature=1.0, batch_size=len(prompts))
        total = time.perf_counter() - start
    finally:
        rollout_module.generate = original
    return total, clock["sampled"] - start, int(roll.response_lengths.sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="tiny,realistic")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| shape | side | new tokens/s (rollout) | rollout s | sampling s |")
    print("|---|---|---|---|---|")
    for name in [s for s in args.shapes.split(",") if s]:
        shape = SHAPES[name]
        with tempfile.TemporaryDirectory() as tmp:
            model_dir, prompt_file = assets(shape, Path(tmp), 1)
            model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            rows = [json.loads(x)["prompt"] for x in prompt_file.read_text().splitlines()]
            prompts = [p for p in rows[:PROMPTS] for _ in range(SAMPLES)]
            for side, fn in (
                ("HF generate + log-probs", hf_rollout),
                ("alignlab rollout", alignlab_rollout),
            ):
                fn(model, tokenizer, prompts[:4], 4)  # warm-up
                runs = [fn(model, tokenizer, prompts, shape["new"]) for _ in range(args.repeats)]
                total = statistics.median(r[0] for r in runs)
                sampling = statistics.median(r[1] for r in runs)
                tokens = statistics.median(r[2] for r in runs)
                print(
                    f"| {name} | {side} | {tokens / total:,.0f} | {total:.2f} | {sampling:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
