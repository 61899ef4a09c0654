"""SFT speed and memory: alignlab's SFT recipe against TRL's SFTTrainer, in one run.

Same model, same data (token sequences of fixed length, loss on every token), same batch,
fp32 (or bf16 autocast, set explicitly on both sides), one process per run. Shapes:
  tiny:      Llama body hidden 256, 4 layers, vocabulary ~300,     16 sequences x 60 tokens
  realistic: the same body,                   vocabulary 32,000,   16 sequences x 250 tokens
  qwen0.5b:  Qwen2.5-0.5B-like Llama (hidden 896, 24 layers, 14 / 2 KV heads, intermediate
             4864, vocabulary 151,936, tied embeddings, 494M parameters), 2 x 512 tokens
  qwen1.5b:  Qwen2.5-1.5B-like (hidden 1536, 28 layers, 12 / 2 heads, intermediate 8960,
             1.54B), 2 x 512 tokens: ~35 GB of RAM in fp32, skipped with a message on a
             machine with less (`--weights bf16` halves it)
A word-level tokenizer maps each word `w<i>` to token i, so both sides see identical ids.
The model folder and data are built once per shape, in their own process; each run then
trains in a fresh subprocess, and peak memory is that process's max RSS. Seconds/step is the
median over the steps after the first. TRL runs with its defaults (`trl`: gradient
checkpointing on) and with checkpointing off (`trl-no-gc`, as alignlab's default), bf16 off
on both; alignlab with its defaults (`alignlab`) and its low-memory settings
(`alignlab-low-memory`: AdamW updates in backward, no clipping, gradient checkpointing of
three layers in four). `--repeats N` alternates TRL and alignlab N times, so
under a changing machine load neighbouring runs compare; the table gives the median s/step
and the largest peak. Achieved FLOP/s (`real_shapes.model_flops`: 6 x params x tokens plus
attention) is divided by a 2048³ fp32 matmul timed just before each run. `--weights bf16`
loads the weights in bf16 on both sides (alignlab `model.dtype=bf16`, TRL `dtype=bfloat16`;
AdamW's state is then bf16 too): pure bf16 training, not autocast.

With a CUDA device it also times TRL and alignlab in bf16 autocast at 8 x 1024 tokens on
`--gpu-shape` (default: a 0.5B-class Llama, hidden 1024, 24 layers, vocabulary 32,000; or
qwen0.5b / qwen1.5b) and reports s/step, tokens/s, MFU against the device's dense bf16 peak
(--gpu-peak-tflops, H100/H200: 989) and peak GPU memory (`--shapes ""` for the GPU rows only).

    python benchmarks/sft_speed.py            # tiny and realistic, fp32 and bf16
    python benchmarks/sft_speed.py --shapes qwen0.5b --precision fp32 --steps 5 --repeats 2
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_shapes import (  # noqa: E402 - benchmarks/ is not a package
    QWEN_05B,
    QWEN_15B,
    QWEN_VOCAB,
    load_average,
    matmul_flops,
    model_flops,
    too_big,
)

BODY = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 688}
SHAPES = {
    "tiny": {"vocab": 300, "batch": 16, "seq": 60, "body": BODY},
    "realistic": {"vocab": 32000, "batch": 16, "seq": 250, "body": BODY},
    "qwen0.5b": {"vocab": QWEN_VOCAB, "batch": 2, "seq": 512, "body": QWEN_05B},
    "qwen1.5b": {"vocab": QWEN_VOCAB, "batch": 2, "seq": 512, "body": QWEN_15B},
}
WEIGHT_BYTES = {"fp32": 4, "bf16": 2}
TRL_RUNS = ("trl", "trl-no-gc")
"""TRL with its defaults (gradient checkpointing on), and with checkpointing off."""
ALIGNLAB_RUNS = {
    "alignlab": (),
    "alignlab-low-memory": (
        "train.step_in_backward=true",
        "train.max_grad_norm=0",
        "model.gradient_checkpointing=true",
        "model.checkpoint_fraction=0.75",
    ),
}
"""alignlab with its defaults, and its low-memory settings: AdamW updates in backward (no
gradient buffer; no global clipping) and gradient checkpointing of three layers in four."""


# --- shared set-up (runs inside each worker) ---


def make_assets(shape: dict, folder: Path, num_sequences: int) -> tuple[Path, Path]:
    """A word-level tokenizer + Llama folder (`shape["body"]`, default the small BODY), and a
    JSONL of fixed-length texts. Kept when `folder` already holds them: a driver builds them
    once per shape, outside the measured processes."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from alignlab.models.tiny import build_tiny_model, tiny_llama_config

    model_dir, data = folder / "model", folder / "data.jsonl"
    if (model_dir / "config.json").exists() and data.exists():
        return model_dir, data
    specials = ["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(shape["vocab"] - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<pad>"
    )
    config = tiny_llama_config(len(tokenizer), **shape.get("body", BODY))
    build_tiny_model(model_dir, tokenizer, config, seed=0)
    rng = random.Random(0)
    words = shape["seq"] - 1  # + EOS appended by both trainers
    with data.open("w") as handle:
        for _ in range(num_sequences):
            text = " ".join(
                f"w{rng.randrange(shape['vocab'] - len(specials))}" for _ in range(words)
            )
            handle.write(json.dumps({"text": text}) + "\n")
    return model_dir, data


def make_shape_assets(shape: dict, folder: Path, steps: int) -> None:
    """Everything a worker of this script reads, for `steps` optimizer steps."""
    make_assets(shape, folder, shape["batch"] * steps)


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


def run_dir(folder: Path) -> Path:
    """A fresh output folder inside the shared assets folder, one per run."""
    return Path(tempfile.mkdtemp(prefix="out-", dir=folder))


def worker_alignlab(
    shape: dict,
    steps: int,
    folder: Path,
    precision: str,
    weights: str = "fp32",
    extra: tuple[str, ...] = (),
) -> list[float]:
    from alignlab.config import load_config
    from alignlab.recipes import sft

    model_dir, data = make_assets(shape, folder, shape["batch"] * steps)
    out = run_dir(folder)
    cfg = load_config(
        sft.SFTConfig,
        None,
        [
            f"model.path={model_dir}",
            f"model.dtype={weights}",
            f"data.path={data}",
            f"data.max_length={shape['seq']}",
            f"train.output_dir={out}",
            f"train.micro_batch_size={shape['batch']}",
            f"train.max_steps={steps}",
            "train.lr=1e-4",
            "train.tensorboard=false",
            "train.progress=false",
            f"train.mixed_precision={'bf16' if precision == 'bf16' else 'no'}",
            *extra,
        ],
    )
    sft.run(cfg)
    return step_gaps(out)


def trl_model(model_dir: Path, weights: str) -> object:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)


def worker_trl(
    shape: dict,
    steps: int,
    folder: Path,
    precision: str,
    weights: str = "fp32",
    gpu: bool = False,
    gradient_checkpointing: bool = True,
) -> list[float]:
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir, data = make_assets(shape, folder, shape["batch"] * steps)
    clock, stamps = trl_clock()

    trainer = SFTTrainer(
        model=trl_model(model_dir, weights),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        args=SFTConfig(
            output_dir=str(run_dir(folder)),
            per_device_train_batch_size=shape["batch"],
            max_length=shape["seq"],
            max_steps=steps,
            learning_rate=1e-4,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not gpu,
            gradient_checkpointing=gradient_checkpointing,  # TRL's default: True
            bf16=precision == "bf16",  # TRL's SFTConfig defaults to bf16: set it explicitly
            dataloader_num_workers=0,
            disable_tqdm=True,
        ),
        callbacks=[clock],
    )
    trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def shape_flops(shape: dict) -> float:
    tokens = shape["batch"] * shape["seq"]
    return model_flops(shape["body"], shape["vocab"], tokens, shape["seq"])


# --- GPU path ---


GPU_BODY = {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 2816}
GPU_SHAPES = {
    "gpu": {"vocab": 32000, "batch": 8, "seq": 1024, "body": GPU_BODY},
    **{name: {**SHAPES[name], "batch": 8, "seq": 1024} for name in ("qwen0.5b", "qwen1.5b")},
}


def gpu_row(framework: str, shape: dict, steps: int, folder: Path, peak_tflops: float) -> dict:
    """One GPU run: bf16 autocast over fp32 weights, 8 x 1024 tokens."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    if framework == "alignlab":
        gaps = worker_alignlab(shape, steps, folder, "bf16")
    else:
        gaps = worker_trl(shape, steps, folder, "bf16", gpu=True)
    step_s = statistics.median(gaps[2:])
    return {
        "s_per_step": step_s,
        "tokens_per_s": shape["batch"] * shape["seq"] / step_s,
        "mfu": shape_flops(shape) / step_s / (peak_tflops * 1e12),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


# --- driver (shared with dpo_speed.py) ---


def worker_main(args: argparse.Namespace, shapes: dict, make, alignlab, trl) -> None:  # noqa: ANN001
    """A worker process: build the assets, or train one side and print its s/step as JSON."""
    shape = shapes[args.shapes]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        if args.worker == "assets":
            make(shape, folder, args.steps)
            return
        if args.worker in ALIGNLAB_RUNS:
            extra = ALIGNLAB_RUNS[args.worker]
            gaps = alignlab(shape, args.steps, folder, args.precision, args.weights, extra)
        else:
            checkpointing = args.worker == "trl"  # TRL's default; trl-no-gc turns it off
            gaps = trl(
                shape, args.steps, folder, args.precision, args.weights,
                gradient_checkpointing=checkpointing,
            )  # fmt: skip
    timed = gaps[1:] if len(gaps) > 2 else gaps  # the first gaps include warm-up
    print(json.dumps({"s_per_step": statistics.median(timed), "steps_timed": len(timed)}))


def add_run_arguments(parser: argparse.ArgumentParser, shapes: str) -> None:
    parser.add_argument("--shapes", default=shapes, help="comma-separated CPU shapes; empty = none")
    parser.add_argument(
        "--precision", default="fp32,bf16", help="fp32 and/or bf16 autocast, both sides"
    )
    parser.add_argument(
        "--weights", default="fp32", choices=sorted(WEIGHT_BYTES), help="weight dtype, both sides"
    )
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="TRL, alignlab, TRL, ... N times")
    parser.add_argument(
        "--trl",
        default="trl,trl-no-gc",
        help="TRL configurations: trl = its defaults (gradient checkpointing on), "
        "trl-no-gc = checkpointing off (alignlab's default)",
    )
    parser.add_argument(
        "--alignlab",
        default="alignlab,alignlab-low-memory",
        help="alignlab configurations: alignlab = its defaults, alignlab-low-memory = "
        + " ".join(ALIGNLAB_RUNS["alignlab-low-memory"]),
    )
    parser.add_argument(
        "--worker", choices=[*ALIGNLAB_RUNS, *TRL_RUNS, "assets"], help=argparse.SUPPRESS
    )
    parser.add_argument("--folder", help=argparse.SUPPRESS)


def run_pairs(
    script: str, shapes: dict, args: argparse.Namespace, copies: int = 0
) -> list[tuple[str, dict, dict[str, list[dict]]]]:
    """(label, shape, {framework: [payload per repeat]}) for every requested shape and
    precision. The assets are built once per shape and shared by all its runs; each payload
    carries the fp32 matmul FLOP/s and the load average measured just before its run."""
    rows = []
    for precision in [p for p in args.precision.split(",") if p]:
        for name in [s for s in args.shapes.split(",") if s]:
            shape = shapes[name]
            label = f"{name} {precision}" + (" (bf16 weights)" if args.weights == "bf16" else "")
            skip = too_big(shape["body"], shape["vocab"], WEIGHT_BYTES[args.weights], copies)
            chosen = [*args.trl.split(","), *args.alignlab.split(",")]
            runs: dict[str, list[dict]] = {name: [] for name in chosen if name}
            if skip:
                print(f"  {label}: {skip}", flush=True)
                rows.append((label, shape, {fw: [{"error": skip}] for fw in runs}))
                continue
            with tempfile.TemporaryDirectory() as tmp:
                common = [
                    "--shapes", name, "--steps", str(args.steps), "--precision", precision,
                    "--weights", args.weights, "--folder", tmp,
                ]  # fmt: skip
                subprocess.run([sys.executable, script, "--worker", "assets", *common], check=True)
                for repeat in range(args.repeats):
                    for framework in runs:
                        context = {"matmul": matmul_flops(), "load": load_average()}
                        payload = {**run_worker(script, [framework, *common]), **context}
                        runs[framework].append(payload)
                        print(f"  {label} {framework:8s} run {repeat + 1}: {payload}", flush=True)
            rows.append((label, shape, runs))
    return rows


def _seconds(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def print_table(rows: list[tuple[str, dict, dict[str, list[dict]]]], flops) -> None:  # noqa: ANN001
    """Markdown rows: median s/step (each run's), largest peak, achieved FLOP/s (`flops(shape)`
    per step over the median s/step) against the median matmul of the runs, highest load."""
    print(
        "\n| shape | framework | s/step (each run) | peak GB | achieved GFLOP/s | of matmul "
        "| load |\n|---|---|---|---|---|---|---|"
    )
    for label, shape, runs in rows:
        summary = {}
        for framework, payloads in runs.items():
            good = [p for p in payloads if "error" not in p]
            if not good:
                print(f"| {label} | {framework} | {payloads[-1]['error']} | | | | |")
                continue
            steps = [p["s_per_step"] for p in good]
            s = summary[framework] = {
                "s_per_step": statistics.median(steps),
                "peak_gb": max(p["peak_gb"] for p in good),
            }
            achieved = flops(shape) / s["s_per_step"]
            matmul = statistics.median(p["matmul"] for p in good)
            each = ", ".join(_seconds(x) for x in steps)
            print(
                f"| {label} | {framework} | {_seconds(s['s_per_step'])} ({each}) "
                f"| {s['peak_gb']:.2f} | {achieved / 1e9:.0f} | {achieved / matmul:.0%} "
                f"| {max(p['load'] for p in good):.1f} |"
            )
        ours = [name for name in ALIGNLAB_RUNS if name in summary]
        for name, trl in [(n, t) for n in ours for t in TRL_RUNS if t in summary]:
            speed = summary[trl]["s_per_step"] / summary[name]["s_per_step"]
            memory = summary[name]["peak_gb"] / summary[trl]["peak_gb"]
            print(
                f"| {label} | **{name} vs {trl}** | **{speed:.2f}x steps/s** "
                f"| **{memory:.2f}x memory** | | | |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser, "tiny,realistic")
    parser.add_argument("--gpu-shape", default="gpu", choices=sorted(GPU_SHAPES))
    parser.add_argument("--gpu-peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if args.worker:
        worker_main(args, SHAPES, make_shape_assets, worker_alignlab, worker_trl)
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fp32 matmul 2048^3: {matmul_flops() / 1e9:.0f} GFLOP/s")  # fmt: skip
    print_table(run_pairs(__file__, SHAPES, args), shape_flops)

    if torch.cuda.is_available():
        shape = GPU_SHAPES[args.gpu_shape]
        gpu_rows = {}
        for framework in ("trl", "alignlab"):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    gpu_rows[framework] = gpu_row(
                        framework, shape, args.steps + 3, Path(tmp), args.gpu_peak_tflops
                    )
                except Exception as error:  # TRL may be missing on the GPU machine
                    gpu_rows[framework] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  GPU {framework:8s} {gpu_rows[framework]}", flush=True)
        print(f"\nGPU ({torch.cuda.get_device_name()}): {args.gpu_shape}, bf16, 8 x 1024 tokens")
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
