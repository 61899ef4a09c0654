"""VLM SFT and DPO speed and memory: alignlab's `vlm_sft` / `vlm_dpo` against TRL's
SFTTrainer / DPOTrainer on the same tiny LLaVA, same rows, same batch, in one run.

Both sides train the same LLaVA folder (`alignlab.models.vlm_tiny`: CLIP ViT tower + GELU MLP
projector + Llama LLM, CLIP preprocessing on the PIL path, one image token per patch) on the
shapes world's export (`alignlab.lab.shapes.export`: 64-pixel PNGs, TRL's vision formats),
as LLaVA's stage 2 (Liu et al., 2023, arXiv:2304.08485): projector and LLM train, the tower
is frozen (`alignlab.models.vlm.set_trainable` on TRL's model too). fp32 on both (TRL's
configs default to bf16: set off), gradient checkpointing off on both (alignlab's VLM path has
none; TRL's default is on), no eval, no saving inside the timed steps, same max length, lr,
AdamW and clipping at 1.0. Loss on the assistant tokens only on both sides: alignlab reads
the `messages` rows with `data.completion_only_loss=true` (its default); TRL gets the same
conversations split as conversational prompt / completion rows (its `completion_only_loss`
default), since TRL's `messages` path trains every token unless the chat template carries
`{% generation %}` marks. DPO: sigmoid loss, β 0.1, and a LIVE reference on both sides (a
frozen copy run each step: TRL refuses `precompute_ref_log_probs` for vision datasets, so
alignlab runs `reference.mode=model`, not its default `precomputed`). Shapes:
  tiny:            tower hidden 32 / 2 layers, LLM hidden 32 / 2 layers, vocabulary ~300
                   (the test-size LLaVA), 64-px images, patch 8: 64 image tokens
  realistic-small: tower hidden 256 / 4 layers, LLM hidden 512 / 8 layers (intermediate
                   2048), 51M parameters, vocabulary 32,000 (the tokenizer's ~425 tokens,
                   the embedding padded to 32,000 rows, so the output projection costs what
                   a real one does), 64-px images, patch 8: 64 image tokens
Rows are ~90-145 tokens, 64 of them image tokens; the batch is 8 (pairs, for DPO) on both.
The tokenizer is BPE on the export's texts. TRL gets the rows in the order alignlab's schedule
trains them (`alignlab.training.batches.BatchSchedule`, seed 0) and samples them sequentially,
so optimizer step s sees the same rows on both sides. Each worker runs `--warmup` untimed
steps, then `--steps` timed ones; s/step is the median of the timed steps' gaps (between
consecutive optimizer-step stamps: alignlab's metrics.jsonl, a TRL callback), so model
loading, data encoding and the final save are outside it on both sides; each batch's image
preprocessing and collation (both sides run the processor per batch) is inside. Assets are
built once per shape in their own process; each run trains in a fresh subprocess, and peak
memory is that process tree's max RSS (`sft_speed.run_worker`), loading included. Each
payload also gives the mean padded and trained tokens per batch, counted in each side's
collator, so a reader can check both did the same work. `--repeats N` alternates TRL and
alignlab N times; the table gives the median s/step and the largest peak; the JSON (every
run's payload) goes to `--out`.

    python benchmarks/vlm_speed.py --shapes tiny --steps 2
    python benchmarks/vlm_speed.py --shapes tiny,realistic-small --steps 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_shapes import load_average  # noqa: E402 - benchmarks/ is not a package
from sft_speed import _seconds, run_dir, run_worker, step_gaps, trl_clock  # noqa: E402

SHAPES = {
    "tiny": {
        "batch": 8, "image_size": 64, "patch_size": 8, "vision_hidden": 32, "vision_layers": 2,
        "text_hidden": 32, "text_layers": 2, "vocab": 300, "tokenizer_vocab": 300,
    },
    "realistic-small": {
        "batch": 8, "image_size": 64, "patch_size": 8, "vision_hidden": 256, "vision_layers": 4,
        "text_hidden": 512, "text_layers": 8, "vocab": 32000, "tokenizer_vocab": 2000,
    },
}  # fmt: skip
METHODS = ("sft", "dpo")
FRAMEWORKS = ("trl", "alignlab")
MAX_LENGTH = 256  # the shapes rows are ~100 tokens with their 64 image tokens: never cut
LR = {"sft": 1e-4, "dpo": 1e-6}  # as sft_speed.py / dpo_speed.py
BETA = 0.1


# --- shared set-up (runs inside each worker) ---


def make_assets(shape: dict, folder: Path, rows: int) -> tuple[Path, Path]:
    """(model folder, export folder): the shapes export with `rows` train images (sft.jsonl,
    preference.jsonl) and a LLaVA of `shape` whose tokenizer is trained on its texts. Kept when
    `folder` already holds them: the driver builds them once per shape, outside the measured
    processes."""
    from alignlab.lab.shapes.export import export_shapes
    from alignlab.models.vlm_tiny import save_vlm, tiny_llava, tiny_vlm_tokenizer

    model_dir, data_dir = folder / "model", folder / "data"
    if (model_dir / "config.json").exists() and (data_dir / "manifest.json").exists():
        return model_dir, data_dir
    export_shapes(data_dir, n_train=rows, n_valid=0, n_heldout=0, image_size=shape["image_size"])
    texts = [
        part["text"]
        for name in ("sft.jsonl", "preference.jsonl")
        for line in (data_dir / name).read_text().splitlines()
        for key, turns in json.loads(line).items()
        if key in ("messages", "prompt", "chosen", "rejected")
        for turn in turns
        for part in turn["content"]
        if part["type"] == "text"
    ]
    tokenizer = tiny_vlm_tokenizer(texts, vocab_size=shape["tokenizer_vocab"])
    model, processor = tiny_llava(
        tokenizer,
        **{key: shape[key] for key in ("image_size", "patch_size", "vision_hidden")},
        vision_layers=shape["vision_layers"],
        text_hidden=shape["text_hidden"],
        text_layers=shape["text_layers"],
    )
    if shape["vocab"] > model.get_input_embeddings().num_embeddings:
        # rows no token uses: the output projection and its softmax cost what a real
        # vocabulary's do on both sides
        model.resize_token_embeddings(shape["vocab"])
    save_vlm(model_dir, model, processor)
    return model_dir, data_dir


class BatchCounter:
    """Wraps a collator: records each batch's padded tokens (B x T) and trained tokens."""

    def __init__(self, collate: Any) -> None:
        self.collate, self.padded, self.trained = collate, [], []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        batch = self.collate(*args, **kwargs)
        self.padded.append(batch["input_ids"].numel())
        if "labels" in batch:  # alignlab (SFT, DPO), TRL SFT
            self.trained.append(int((batch["labels"] != -100).sum()))
        else:  # TRL DPO: prompt tokens are 0 in its completion mask
            self.trained.append(int((batch["completion_mask"] * batch["attention_mask"]).sum()))
        return batch

    def summary(self) -> dict[str, float]:
        return {
            "padded_tokens": statistics.mean(self.padded),
            "trained_tokens": statistics.mean(self.trained),
        }


def worker_alignlab(method: str, shape: dict, steps: int, folder: Path) -> tuple[list, dict]:
    from alignlab.config import load_config
    from alignlab.recipes import vlm_dpo, vlm_sft

    model_dir, data_dir = make_assets(shape, folder, shape["batch"] * steps)
    out = run_dir(folder)
    common = [
        f"model.path={model_dir}", "model.dtype=fp32",
        f"data.max_length={MAX_LENGTH}", "data.completion_only_loss=true",
        f"train.output_dir={out}", f"train.micro_batch_size={shape['batch']}",
        f"train.max_steps={steps}", f"train.lr={LR[method]}", "train.mixed_precision=no",
        "train.tensorboard=false", "train.progress=false", "train.seed=0",
        "trainable.tower=false", "trainable.projector=true", "trainable.llm=true",
    ]  # fmt: skip
    if method == "sft":
        counter = BatchCounter(vlm_sft.collate_vlm)
        vlm_sft.collate_vlm = counter  # the recipe's collate looks it up at each batch
        cfg = load_config(
            vlm_sft.VlmSFTConfig, None, [*common, f"data.path={data_dir / 'sft.jsonl'}"]
        )
        vlm_sft.run(cfg)
    else:
        counter = BatchCounter(vlm_dpo.collate_vlm_pairs)
        vlm_dpo.collate_vlm_pairs = counter
        dpo = ["loss=dpo", f"beta={BETA}", "reference.mode=model"]
        cfg = load_config(
            vlm_dpo.VlmDPOConfig,
            None,
            [*common, *dpo, f"data.path={data_dir / 'preference.jsonl'}"],
        )
        vlm_dpo.run(cfg)
    return step_gaps(out), counter.summary()


def trl_rows(method: str, data_dir: Path, batch: int, steps: int) -> Any:
    """The export's rows as a `datasets.Dataset` in TRL's conversational vision formats,
    images decoded by `datasets`: SFT as prompt / completion (the user turn, the assistant
    turn), DPO as prompt / chosen / rejected; the world's extra columns left out. The rows
    come in the order alignlab's schedule (`BatchSchedule`, seed 0) trains them, for TRL's
    sequential sampler: step s gets the same rows on both sides."""
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from datasets import List as ListFeature

    from alignlab.training.batches import BatchSchedule

    name = "sft.jsonl" if method == "sft" else "preference.jsonl"
    rows = []
    for line in (data_dir / name).read_text().splitlines():
        record = json.loads(line)
        images = [str(data_dir / path) for path in record["images"]]
        if method == "sft":
            user, assistant = record["messages"]
            rows.append({"images": images, "prompt": [user], "completion": [assistant]})
        else:
            rows.append(
                {"images": images, **{k: record[k] for k in ("prompt", "chosen", "rejected")}}
            )
    schedule = BatchSchedule(len(rows), batch, seed=0)
    order = [i for step in range(steps) for i in schedule.step_indices(step)]
    dataset = Dataset.from_list([rows[i] for i in order])
    return dataset.cast_column("images", ListFeature(ImageFeature()))


def worker_trl(method: str, shape: dict, steps: int, folder: Path) -> tuple[list, dict]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from alignlab.models.vlm import set_trainable

    model_dir, data_dir = make_assets(shape, folder, shape["batch"] * steps)
    clock, stamps = trl_clock()
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    set_trainable(model, tower=False, projector=True, llm=True)  # as alignlab's run
    common = dict(
        output_dir=str(run_dir(folder)),
        per_device_train_batch_size=shape["batch"],
        max_length=MAX_LENGTH,
        max_steps=steps,
        learning_rate=LR[method],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL's configs default to bf16 where it can: set it explicitly
        gradient_checkpointing=False,  # TRL's default is True; alignlab's VLM path has none
        dataloader_num_workers=0,
        disable_tqdm=True,
        train_sampling_strategy="sequential",  # the rows come in alignlab's order
        seed=0,
    )
    if method == "sft":
        trainer_class, args = SFTTrainer, SFTConfig(**common)
    else:
        trainer_class, args = DPOTrainer, DPOConfig(**common, beta=BETA, loss_type=["sigmoid"])
    trainer = trainer_class(
        model=model,
        processing_class=AutoProcessor.from_pretrained(model_dir),
        train_dataset=trl_rows(method, data_dir, shape["batch"], steps),
        args=args,
        callbacks=[clock],
    )
    counter = BatchCounter(trainer.data_collator)
    trainer.data_collator = counter  # the train dataloader is built in train()
    trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:])], counter.summary()


# --- driver ---


def shape_of(args: argparse.Namespace, name: str) -> dict:
    shape = dict(SHAPES[name])
    if args.batch_size:
        shape["batch"] = args.batch_size
    return shape


def worker_main(args: argparse.Namespace) -> None:
    """A worker process: build the assets, or train one side and print its s/step as JSON."""
    shape = shape_of(args, args.shapes)
    total = args.warmup + args.steps
    folder = Path(args.folder)
    if args.worker == "assets":
        make_assets(shape, folder, shape["batch"] * total)
        return
    worker = worker_alignlab if args.worker == "alignlab" else worker_trl
    gaps, tokens = worker(args.method, shape, total, folder)
    timed = gaps[-args.steps :]  # the first step has no gap; the warm-up's gaps are dropped
    payload = {"s_per_step": statistics.median(timed), "steps_timed": len(timed), **tokens}
    print(json.dumps(payload))


def run_all(args: argparse.Namespace) -> list[dict]:
    """One record per (shape, method): {framework: [payload per repeat]}, alternating TRL and
    alignlab; the assets are built once per shape and shared by its runs."""
    records = []
    for name in [s for s in args.shapes.split(",") if s]:
        with tempfile.TemporaryDirectory() as tmp:
            common = [
                "--shapes", name, "--steps", str(args.steps), "--warmup", str(args.warmup),
                "--batch-size", str(args.batch_size), "--folder", tmp,
            ]  # fmt: skip
            subprocess.run([sys.executable, __file__, "--worker", "assets", *common], check=True)
            for method in [m for m in args.methods.split(",") if m]:
                runs: dict[str, list[dict]] = {fw: [] for fw in FRAMEWORKS}
                for repeat in range(args.repeats):
                    for framework in FRAMEWORKS:
                        context = {"load": load_average()}
                        worker_args = [framework, "--method", method, *common]
                        payload = {**run_worker(__file__, worker_args), **context}
                        runs[framework].append(payload)
                        print(f"  {name} {method} {framework:8s} run {repeat + 1}: {payload}")
                records.append({"shape": name, "method": method, "runs": runs})
    return records


def summarise(payloads: list[dict]) -> dict | None:
    """Median s/step over the runs and the largest peak, or None when every run failed."""
    good = [p for p in payloads if "error" not in p]
    if not good:
        return None
    return {
        "s_per_step": statistics.median(p["s_per_step"] for p in good),
        "each": [p["s_per_step"] for p in good],
        "peak_gb": max(p["peak_gb"] for p in good),
        "trained_tokens": good[-1]["trained_tokens"],
        "padded_tokens": good[-1]["padded_tokens"],
    }


def print_table(records: list[dict]) -> None:
    """Markdown: s/step (each run's in brackets), peak GiB, tokens per batch, the ratios."""
    print(
        "\n| shape | method | TRL s/step | alignlab s/step | TRL peak GB | alignlab peak GB "
        "| tokens/batch TRL / alignlab (trained) | alignlab vs TRL |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for record in records:
        trl, ours = (record["summary"][fw] for fw in FRAMEWORKS)
        if trl is None or ours is None:
            errors = "; ".join(
                f"{fw}: {record['runs'][fw][-1]['error']}"
                for fw in FRAMEWORKS
                if record["summary"][fw] is None
            )
            print(f"| {record['shape']} | {record['method']} | {errors} | | | | | |")
            continue

        def seconds(s: dict) -> str:
            each = ", ".join(_seconds(x) for x in s["each"])
            return _seconds(s["s_per_step"]) + (f" ({each})" if len(s["each"]) > 1 else "")

        speed = trl["s_per_step"] / ours["s_per_step"]
        memory = ours["peak_gb"] / trl["peak_gb"]
        tokens = (
            f"{trl['padded_tokens']:.0f} / {ours['padded_tokens']:.0f} "
            f"({trl['trained_tokens']:.0f} / {ours['trained_tokens']:.0f})"
        )
        print(
            f"| {record['shape']} | {record['method']} | {seconds(trl)} | {seconds(ours)} "
            f"| {trl['peak_gb']:.2f} | {ours['peak_gb']:.2f} | {tokens} "
            f"| **{speed:.2f}x steps/s, {memory:.2f}x memory** |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="tiny,realistic-small", help="comma-separated")
    parser.add_argument("--methods", default="sft,dpo", help="sft and/or dpo")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = the shape's (8)")
    parser.add_argument("--repeats", type=int, default=1, help="TRL, alignlab, TRL, ... N times")
    parser.add_argument("--out", default="runs/bench/vlm_speed.json")
    parser.add_argument("--worker", choices=[*FRAMEWORKS, "assets"], help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first step has no gap)")
    if args.worker:
        worker_main(args)
        return

    import torch
    import transformers
    import trl

    versions = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )
    print(f"{versions}, {torch.get_num_threads()} threads, fp32, "
          f"{args.warmup} warm-up + {args.steps} timed steps")  # fmt: skip
    records = run_all(args)
    for record in records:
        record["summary"] = {fw: summarise(record["runs"][fw]) for fw in FRAMEWORKS}
    print_table(records)

    from alignlab.fileio import atomic_write_text

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "versions": versions, "shapes": SHAPES, "records": records}
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
