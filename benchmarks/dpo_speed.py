"""DPO speed and memory: alignlab's DPO recipe against TRL's DPOTrainer, in one run.

Same model (the ~3M-parameter Llama body of sft_speed.py), same pairs, same batch, sigmoid
DPO loss with beta 0.1, a frozen reference model on both sides (TRL copies the policy when
ref_model is None; alignlab uses reference.mode=model), one process, fp32 and bf16 autocast
set explicitly on both sides (TRL's configs default to bf16). Two shapes:
  tiny:      vocabulary ~300,    16 pairs of 16 prompt + 48 response tokens
  realistic: vocabulary 32,000,   8 pairs of 50 prompt + 200 response tokens
A word-level tokenizer maps each word `w<i>` to token i, so both sides see identical ids
(each response also gets an EOS on both sides). Each (framework, shape, precision) runs in a
fresh subprocess; peak memory is that process's max RSS. Seconds/step is the median over the
timed steps after warm-up. Targets at the realistic shape: >= 2x TRL's steps/s, <= 0.6x its
peak memory.

    python benchmarks/dpo_speed.py --shapes tiny --steps 4
    python benchmarks/dpo_speed.py --shapes realistic
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_speed import make_assets, run_worker, step_gaps, trl_clock  # noqa: E402

SHAPES = {
    "tiny": {"vocab": 300, "batch": 16, "prompt": 16, "response": 48},
    "realistic": {"vocab": 32000, "batch": 8, "prompt": 50, "response": 200},
}
BETA = 0.1


def make_pairs(shape: dict, folder: Path, num_pairs: int) -> tuple[Path, Path]:
    """The sft_speed tokenizer + model, and a JSONL of (prompt, chosen, rejected) word texts."""
    seq = shape["prompt"] + shape["response"] + 1
    model_dir, _ = make_assets({"vocab": shape["vocab"], "seq": seq}, folder, 0)
    rng = random.Random(0)
    words = shape["vocab"] - 4  # the 4 special tokens come first

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(words)}" for _ in range(n))

    data = folder / "pairs.jsonl"
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


def worker_alignlab(shape: dict, steps: int, folder: Path, precision: str) -> list[float]:
    from alignlab.config import load_config
    from alignlab.recipes import dpo

    model_dir, data = make_pairs(shape, folder, shape["batch"] * steps)
    cfg = load_config(
        dpo.DPOConfig,
        None,
        [
            f"model.path={model_dir}",
            f"data.path={data}",
            f"data.max_length={shape['prompt'] + shape['response'] + 1}",
            f"train.output_dir={folder / 'run'}",
            f"train.micro_batch_size={shape['batch']}",
            f"train.max_steps={steps}",
            "train.lr=1e-6",
            "train.tensorboard=false",
            "train.progress=false",
            f"train.mixed_precision={'bf16' if precision == 'bf16' else 'no'}",
            "reference.mode=model",
            f"beta={BETA}",
        ],
    )
    dpo.run(cfg)
    return step_gaps(folder / "run")


def worker_trl(shape: dict, steps: int, folder: Path, precision: str) -> list[float]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model_dir, data = make_pairs(shape, folder, shape["batch"] * steps)
    clock, stamps = trl_clock()

    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        args=DPOConfig(
            output_dir=str(folder / "trl"),
            per_device_train_batch_size=shape["batch"],
            max_length=shape["prompt"] + shape["response"] + 1,
            max_steps=steps,
            learning_rate=1e-6,
            beta=BETA,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            gradient_checkpointing=False,  # TRL's configs default to True; alignlab's to False
            bf16=precision == "bf16",  # TRL defaults to bf16: set it explicitly
            dataloader_num_workers=0,
            disable_tqdm=True,
        ),
        callbacks=[clock],
    )
    trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps per run")
    parser.add_argument("--shapes", default="tiny,realistic")
    parser.add_argument("--precision", default="fp32,bf16", help="fp32 and/or bf16, both sides")
    parser.add_argument("--worker", choices=["alignlab", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            fn = worker_alignlab if args.worker == "alignlab" else worker_trl
            gaps = fn(SHAPES[args.shapes], args.steps, Path(tmp), args.precision)
        timed = gaps[1:] if len(gaps) > 2 else gaps  # the first gaps include warm-up
        print(json.dumps({"s_per_step": statistics.median(timed), "steps_timed": len(timed)}))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    runs = [(s, p) for p in args.precision.split(",") for s in args.shapes.split(",")]
    for shape_name, precision in runs:
        results = {}
        for framework in ("trl", "alignlab"):
            payload = run_worker(
                __file__,
                [framework, "--shapes", shape_name, "--steps", str(args.steps),
                 "--precision", precision],
            )  # fmt: skip
            results[framework] = payload
            print(f"  {shape_name:9s} {precision} {framework:8s} {payload}", flush=True)
        rows.append((f"{shape_name} {precision}", results))

    print("\n| shape | framework | s/step | peak GB |")
    print("|---|---|---|---|")
    for name, results in rows:
        for framework, r in results.items():
            if "error" in r:
                print(f"| {name} | {framework} | error: {r['error']} | |")
                continue
            print(f"| {name} | {framework} | {r['s_per_step']:.3f} | {r['peak_gb']:.2f} |")
        if all("error" not in r for r in results.values()):
            speed = results["trl"]["s_per_step"] / results["alignlab"]["s_per_step"]
            memory = results["alignlab"]["peak_gb"] / results["trl"]["peak_gb"]
            print(f"| {name} | **alignlab vs TRL** | **{speed:.2f}x steps/s** | "
                  f"**{memory:.2f}x memory** |")  # fmt: skip


if __name__ == "__main__":
    main()
