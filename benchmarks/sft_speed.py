"""SFT speed and memory: alignlab's SFT recipe against TRL's SFTTrainer, in one run.

Same model (a ~3M-parameter Llama body), same data (token sequences of fixed length, loss on
every token), same batch, fp32, one process. Two shapes:
  tiny:      vocabulary ~300,    16 sequences x 60 tokens
  realistic: vocabulary 32,000,  16 sequences x 250 tokens (the size of real small models)
A word-level tokenizer maps each word `w<i>` to token i, so both sides see identical ids.
Each (framework, shape) runs in a fresh subprocess; peak memory is that process's max RSS.
Seconds/step is the median over the timed steps after warm-up. Achieved FLOP/s uses the
6 x params x tokens rule (plus the output projection) against a fp32 matmul measured here.

With a CUDA device it also times TRL and alignlab on a 0.5B-class Llama in bf16 autocast at
8 x 1024 tokens and reports s/step, tokens/s, MFU against the device's dense bf16 peak
(--gpu-peak-tflops, H100/H200: 989) and peak GPU memory (`--shapes ""` for the GPU rows only).

    python benchmarks/sft_speed.py            # both shapes, both frameworks
    python benchmarks/sft_speed.py --steps 6 --shapes realistic
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "tiny": {"vocab": 300, "batch": 16, "seq": 60},
    "realistic": {"vocab": 32000, "batch": 16, "seq": 250},
}
BODY = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 688}


# --- shared set-up (runs inside each worker) ---


def make_assets(
    shape: dict, folder: Path, num_sequences: int, body: dict = BODY
) -> tuple[Path, Path]:
    """A word-level tokenizer + tiny Llama folder, and a JSONL of fixed-length texts."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from alignlab.models.tiny import build_tiny_model, tiny_llama_config

    specials = ["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(shape["vocab"] - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<pad>"
    )
    config = tiny_llama_config(len(tokenizer), **body)
    model_dir = build_tiny_model(folder / "model", tokenizer, config, seed=0)
    rng = random.Random(0)
    words = shape["seq"] - 1  # + EOS appended by both trainers
    data = folder / "data.jsonl"
    with data.open("w") as handle:
        for _ in range(num_sequences):
            text = " ".join(
                f"w{rng.randrange(shape['vocab'] - len(specials))}" for _ in range(words)
            )
            handle.write(json.dumps({"text": text}) + "\n")
    return model_dir, data


def step_gaps(run_dir: Path) -> list[float]:
    """Seconds between consecutive optimizer steps, from an alignlab run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stamps = [r["time"] for r in rows if "train/loss" in r]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def trl_clock() -> tuple[object, list[float]]:
    """A TRL/transformers callback that stamps the end of every optimizer step."""
    from transformers import TrainerCallback

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            stamps.append(time.perf_counter())

    return Clock(), stamps


def run_worker(script: str, worker_args: list[str]) -> dict:
    """Run `script --worker ...` in a fresh process tree; its last JSON line plus `peak_gb`
    (the tree's max RSS: a running maximum, so each measurement needs its own tree), or
    {"error": last stderr line}."""
    probe = subprocess.run(
        [sys.executable, "-c", "import json,sys,subprocess,resource;"
         "subprocess.run(sys.argv[1:]);"
         "print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))",
         sys.executable, script, "--worker", *worker_args],
        capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip
    lines = probe.stdout.strip().splitlines()
    try:
        payload = json.loads(lines[-2])
        payload["peak_gb"] = json.loads(lines[-1]) / 2**20
    except (IndexError, json.JSONDecodeError):
        payload = {"error": (probe.stderr.strip().splitlines() or ["failed"])[-1]}
    return payload


def worker_alignlab(
    shape: dict, steps: int, folder: Path, precision: str, body: dict = BODY
) -> list[float]:
    from alignlab.config import load_config
    from alignlab.recipes import sft

    model_dir, data = make_assets(shape, folder, shape["batch"] * steps, body)
    cfg = load_config(
        sft.SFTConfig,
        None,
        [
            f"model.path={model_dir}",
            f"data.path={data}",
            f"data.max_length={shape['seq']}",
            f"train.output_dir={folder / 'run'}",
            f"train.micro_batch_size={shape['batch']}",
            f"train.max_steps={steps}",
            "train.lr=1e-4",
            "train.tensorboard=false",
            "train.progress=false",
            f"train.mixed_precision={'bf16' if precision == 'bf16' else 'no'}",
        ],
    )
    sft.run(cfg)
    return step_gaps(folder / "run")


def worker_trl(
    shape: dict, steps: int, folder: Path, precision: str, body: dict = BODY, gpu: bool = False
) -> list[float]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir, data = make_assets(shape, folder, shape["batch"] * steps, body)
    clock, stamps = trl_clock()

    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        args=SFTConfig(
            output_dir=str(folder / "trl"),
            per_device_train_batch_size=shape["batch"],
            max_length=shape["seq"],
            max_steps=steps,
            learning_rate=1e-4,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not gpu,
            gradient_checkpointing=False,  # TRL's configs default to True; alignlab's to False
            bf16=precision == "bf16",  # TRL's SFTConfig defaults to bf16: set it explicitly
            dataloader_num_workers=0,
            disable_tqdm=True,
        ),
        callbacks=[clock],
    )
    trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def matmul_flops(size: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - start)


def model_flops_per_step(shape: dict, body: dict = BODY) -> float:
    h, layers, inter = body["hidden_size"], body["num_layers"], body["intermediate_size"]
    body_params = layers * (4 * h * h + 3 * h * inter)
    tokens = shape["batch"] * shape["seq"]
    attention = layers * 2 * 2 * shape["seq"] * h  # QK^T and AV per token, forward
    return 6 * (body_params + h * shape["vocab"]) * tokens + 3 * attention * tokens


# --- GPU path ---


GPU_BODY = {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 2816}
GPU_SHAPE = {"vocab": 32000, "batch": 8, "seq": 1024}


def gpu_row(framework: str, steps: int, folder: Path, peak_tflops: float) -> dict:
    """A 0.5B-class Llama (hidden 1024, 24 layers, vocab 32k), bf16 autocast, 8 x 1024 tokens."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    if framework == "alignlab":
        gaps = worker_alignlab(GPU_SHAPE, steps, folder, "bf16", GPU_BODY)
    else:
        gaps = worker_trl(GPU_SHAPE, steps, folder, "bf16", GPU_BODY, gpu=True)
    step_s = statistics.median(gaps[2:])
    return {
        "s_per_step": step_s,
        "tokens_per_s": GPU_SHAPE["batch"] * GPU_SHAPE["seq"] / step_s,
        "mfu": model_flops_per_step(GPU_SHAPE, GPU_BODY) / step_s / (peak_tflops * 1e12),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


# --- driver ---


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=7, help="optimizer steps per run (first 2 are warm-up)"
    )
    parser.add_argument("--shapes", default="tiny,realistic", help="CPU shapes; empty = none")
    parser.add_argument("--worker", choices=["alignlab", "trl"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--precision", default="fp32,bf16", help="fp32 and/or bf16 autocast, both sides"
    )
    parser.add_argument("--gpu-peak-tflops", type=float, default=989.0)
    args = parser.parse_args()

    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            fn = worker_alignlab if args.worker == "alignlab" else worker_trl
            gaps = fn(SHAPES[args.shapes], args.steps, Path(tmp), args.precision)
        timed = gaps[1:] if len(gaps) > 2 else gaps  # the first gaps include warm-up
        print(json.dumps({"s_per_step": statistics.median(timed), "steps_timed": len(timed)}))
        return

    import torch

    machine = matmul_flops()
    print(f"fp32 matmul 2048^3: {machine / 1e9:.0f} GFLOP/s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    rows = []
    runs = [(s, p) for p in args.precision.split(",") for s in args.shapes.split(",") if s]
    for shape_name, precision in runs:
        shape = SHAPES[shape_name]
        results = {}
        for framework in ("trl", "alignlab"):
            payload = run_worker(
                __file__,
                [framework, "--shapes", shape_name, "--steps", str(args.steps),
                 "--precision", precision],
            )  # fmt: skip
            results[framework] = payload
            print(f"  {shape_name:9s} {precision} {framework:8s} {payload}", flush=True)
        rows.append((f"{shape_name} {precision}", shape, results))

    print("\n| shape | framework | s/step | peak GB | achieved GFLOP/s | of matmul |")
    print("|---|---|---|---|---|---|")
    for shape_name, shape, results in rows:
        for framework, r in results.items():
            if "error" in r:
                print(f"| {shape_name} | {framework} | error: {r['error']} | | | |")
                continue
            achieved = model_flops_per_step(shape) / r["s_per_step"]
            print(
                f"| {shape_name} | {framework} | {r['s_per_step']:.2f} | {r['peak_gb']:.2f} "
                f"| {achieved / 1e9:.1f} | {achieved / machine:.0%} |"
            )
        if all("error" not in r for r in results.values()):
            speed = results["trl"]["s_per_step"] / results["alignlab"]["s_per_step"]
            memory = results["alignlab"]["peak_gb"] / results["trl"]["peak_gb"]
            print(
                f"| {shape_name} | **alignlab vs TRL** | **{speed:.2f}x steps/s** | **{memory:.2f}x memory** | | |"
            )

    if torch.cuda.is_available():
        gpu_rows = {}
        for framework in ("trl", "alignlab"):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    gpu_rows[framework] = gpu_row(
                        framework, args.steps + 3, Path(tmp), args.gpu_peak_tflops
                    )
                except Exception as error:  # TRL may be missing on the GPU machine
                    gpu_rows[framework] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  GPU {framework:8s} {gpu_rows[framework]}", flush=True)
        print(f"\nGPU ({torch.cuda.get_device_name()}): 0.5B-class Llama, bf16, 8 x 1024 tokens")
        print("| framework | s/step | tokens/s | MFU | peak GB |\n|---|---|---|---|---|")
        for framework, r in gpu_rows.items():
            if "error" in r:
                print(f"| {framework} | error: {r['error']} | | | |")
                continue
            print(
                f"| {framework} | {r['s_per_step']:.3f} | {r['tokens_per_s']:,.0f} "
                f"| {r['mfu']:.1%} | {r['peak_gb']:.1f} |"
            )


if __name__ == "__main__":
    main()
