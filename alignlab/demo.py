"""The main job until the lab lands: build a tiny model, fine-tune it, show where it went.

1. train a byte-level BPE tokenizer on the shipped sample conversations and initialise a tiny
   Llama model from a config (cached in <out>/base);
2. run the SFT recipe (preset `sft_demo`) on the samples;
3. reload the final checkpoint with `AutoModelForCausalLM.from_pretrained` and answer one
   prompt, so the checkpoint is shown to be a plain HF folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alignlab.cli import resolve_preset
from alignlab.config import load_config
from alignlab.data.sources import load_records
from alignlab.recipes import sft

SAMPLES = Path(__file__).parent / "data" / "samples" / "sft_sample.jsonl"


def build_base(out: Path) -> Path:
    from alignlab.models.tiny import build_tiny_model, tiny_llama_config, train_tokenizer

    base = out / "base"
    if (base / "config.json").exists():
        print(f"[1/3] tiny base model: cached in {base}")
        return base
    texts = [
        message["content"]
        for record in load_records(str(SAMPLES))
        for message in record.data["messages"]
    ]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    config = tiny_llama_config(len(tokenizer), hidden_size=128, num_layers=4, num_heads=4)
    build_tiny_model(base, tokenizer, config)
    print(f"[1/3] tiny base model: built in {base} (vocab {len(tokenizer)})")
    return base


def answer(model_dir: Path, question: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="alignlab demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()
    base = build_base(out)
    print("[2/3] SFT on the shipped sample conversations")
    config = load_config(
        sft.SFTConfig,
        resolve_preset("sft_demo"),
        [f"model.path={base}", f"data.path={SAMPLES}", f"train.output_dir={out / 'sft'}"],
    )
    final = sft.run(config)
    metrics = [
        json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()
    ]
    train_losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    eval_losses = [m["eval/loss"] for m in metrics if "eval/loss" in m]
    print("[3/3] reload the checkpoint with AutoModelForCausalLM and answer a prompt")
    question = "What is 2 + 3?"
    print(f"  user: {question}\n  assistant: {answer(final, question)}")
    print(
        f"\ndone in {time.perf_counter() - start:.0f} s\n"
        f"  train loss {train_losses[0]:.3f} -> {train_losses[-1]:.3f}"
        + (f", eval loss {eval_losses[0]:.3f} -> {eval_losses[-1]:.3f}" if eval_losses else "")
        + f"\n  checkpoint: {final}\n  metrics:    {out / 'sft' / 'metrics.jsonl'}"
        f" (TensorBoard: {out / 'sft' / 'tensorboard'})"
    )
