"""DPO speed and memory: alignlab's DPO recipe against TRL's DPOTrainer, in one run.

Same model, same pairs, same batch, sigmoid DPO loss with beta 0.1, each side with its
defaults for the reference: TRL copies the policy when ref_model is None and runs it each
step; alignlab precomputes the reference log-probs in one pass before training
(reference.mode=precomputed), whose time is charged to the steps (pass / steps added to each
step's seconds); one process per run, fp32 and bf16 autocast set explicitly on both
sides (TRL's configs default to bf16). Shapes (bodies as in sft_speed.py):
  tiny:      small Llama body, vocabulary ~300,    16 pairs of 16 prompt + 48 response tokens
  realistic: small Llama body, vocabulary 32,000,   8 pairs of 50 prompt + 200 response tokens
  qwen0.5b:  Qwen2.5-0.5B-like (494M),               2 pairs of 64 prompt + 256 response tokens
  qwen1.5b:  Qwen2.5-1.5B-like (1.54B), the same pairs: ~43 GB of RAM in fp32 with the
             reference copy, skipped with a message on a machine with less
A word-level tokenizer maps each word `w<i>` to token i, so both sides see identical ids
(each response also gets an EOS on both sides). Assets are built once per shape in their own
process; each run trains in a fresh subprocess, and peak memory is that process's max RSS.
Seconds/step is the median over the steps after the first; `--repeats`, `--trl`, `--weights`
and the matmul reference as in sft_speed.py. Achieved FLOP/s counts the policy's forward and backward
and the reference's forward: 8 x params x tokens, plus attention.

    python benchmarks/dpo_speed.py --shapes tiny --steps 4
    python benchmarks/dpo_speed.py --shapes realistic
    python benchmarks/dpo_speed.py --shapes qwen0.5b --precision fp32 --steps 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_shapes import QWEN_05B, QWEN_15B, QWEN_VOCAB, model_flops  # noqa: E402
from sft_speed import (  # noqa: E402 - benchmarks/ is not a package
    BODY,
    add_run_arguments,
    make_assets,
    print_table,
    run_dir,
    run_pairs,
    step_gaps,
    trl_clock,
    trl_model,
    worker_main,
)

SHAPES = {
    "tiny": {"vocab": 300, "batch": 16, "prompt": 16, "response": 48, "body": BODY},
    "realistic": {"vocab": 32000, "batch": 8, "prompt": 50, "response": 200, "body": BODY},
    "qwen0.5b": {"vocab": QWEN_VOCAB, "batch": 2, "prompt": 64, "response": 256, "body": QWEN_05B},
    "qwen1.5b": {"vocab": QWEN_VOCAB, "batch": 2, "prompt": 64, "response": 256, "body": QWEN_15B},
}
BETA = 0.1


def make_pairs(shape: dict, folder: Path, num_pairs: int) -> tuple[Path, Path]:
    """The sft_speed tokenizer + model, and a JSONL of (prompt, chosen, rejected) word texts
    (kept when `folder` already holds them)."""
    seq = shape["prompt"] + shape["response"] + 1
    model_dir, _ = make_assets({**shape, "seq": seq}, folder, 0)
    data = folder / "pairs.jsonl"
    if data.exists():
        return model_dir, data
    rng = random.Random(0)
    words = shape["vocab"] - 4  # the 4 special tokens come first

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(words)}" for _ in range(n))

    with data.open("w") as handle:
        for _ in range(num_pairs):
            record = {
                "prompt": text(shape["prompt"]),
                # a leading space: the word-level pre-tokenizer splits on it either way
                "chosen": " " + text(shape["response"]),
                "rejected": " " + text(shape["response"]),
            }
            handle.write(json.dumps(record) + "\n")
    return model_dir, data


def make_shape_assets(shape: dict, folder: Path, steps: int) -> None:
    make_pairs(shape, folder, shape["batch"] * steps)


def worker_alignlab(
    shape: dict,
    steps: int,
    folder: Path,
    precision: str,
    weights: str = "fp32",
    extra: tuple[str, ...] = (),
) -> list[float]:
    from alignlab.config import load_config
    from alignlab.recipes import dpo

    model_dir, data = make_pairs(shape, folder, shape["batch"] * steps)
    out = run_dir(folder)
    cfg = load_config(
        dpo.DPOConfig,
        None,
        [
            f"model.path={model_dir}",
            f"model.dtype={weights}",
            f"data.path={data}",
            f"data.max_length={shape['prompt'] + shape['response'] + 1}",
            f"train.output_dir={out}",
            f"train.micro_batch_size={shape['batch']}",
            f"train.max_steps={steps}",
            "train.lr=1e-6",
            "train.tensorboard=false",
            "train.progress=false",
            f"train.mixed_precision={'bf16' if precision == 'bf16' else 'no'}",
            f"beta={BETA}",
            *extra,
        ],
    )
    # the precomputed reference (alignlab's default) runs as one pass before training: each
    # step is charged its share, so s/step compares with TRL's reference forward per step
    import time

    from alignlab.training.reference import ReferenceLogProbs

    precompute, spent = ReferenceLogProbs._precompute, []

    def timed(self, items):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        precompute(self, items)
        spent.append(time.perf_counter() - start)

    ReferenceLogProbs._precompute = timed
    dpo.run(cfg)
    share = sum(spent) / steps
    print(f"reference pass: {sum(spent):.1f} s, {share:.2f} s per step", file=sys.stderr)
    return [gap + share for gap in step_gaps(out)]


def worker_trl(
    shape: dict,
    steps: int,
    folder: Path,
    precision: str,
    weights: str = "fp32",
    gradient_checkpointing: bool = True,
) -> list[float]:
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model_dir, data = make_pairs(shape, folder, shape["batch"] * steps)
    clock, stamps = trl_clock()

    trainer = DPOTrainer(
        model=trl_model(model_dir, weights),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        args=DPOConfig(
            output_dir=str(run_dir(folder)),
            per_device_train_batch_size=shape["batch"],
            max_length=shape["prompt"] + shape["response"] + 1,
            max_steps=steps,
            learning_rate=1e-6,
            beta=BETA,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            gradient_checkpointing=gradient_checkpointing,  # TRL's default: True
            bf16=precision == "bf16",  # TRL defaults to bf16: set it explicitly
            dataloader_num_workers=0,
            disable_tqdm=True,
        ),
        callbacks=[clock],
    )
    trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def shape_flops(shape: dict) -> float:
    """Policy forward + backward (6) and reference forward (2) over both sequences of a pair."""
    seq = shape["prompt"] + shape["response"] + 1
    return model_flops(shape["body"], shape["vocab"], 2 * shape["batch"] * seq, seq) * 8 / 6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser, "tiny,realistic")
    args = parser.parse_args()
    if args.worker:
        worker_main(args, SHAPES, make_shape_assets, worker_alignlab, worker_trl)
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(run_pairs(__file__, SHAPES, args, copies=1), shape_flops)


if __name__ == "__main__":
    main()
