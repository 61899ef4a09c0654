"""Online DPO speed: alignlab's `online_dpo` recipe against TRL's experimental OnlineDPOTrainer.

The same work on both sides: N prompts (random word sequences of 16 tokens, the assets of
`sft_speed.py`), 2 sampled responses per prompt at temperature 1, a reward function ranks
them (`hash_reward`, a cheap deterministic function, so the policy's work is what is
timed), one sigmoid-DPO step (β 0.1, no NLL) per batch of B prompts against the frozen
initial model, fp32. TRL interleaves: each step generates its batch's pairs, scores them,
runs the reference and the policy. alignlab's recipe runs a round: sample all N prompts
(batched generation), label, precompute the reference log-probs in one pass, then N / B DPO
steps. Each side is timed end to end (model load excluded on TRL's side, included in
alignlab's stages: it loads the policy for sampling and again for DPO), seconds per DPO step =
total / (N / B). Each run in a fresh process; peak memory is its max RSS.

    python benchmarks/online_dpo_speed.py --shapes tiny
    python benchmarks/online_dpo_speed.py --shapes realistic --prompts 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rl_speed import prompt_assets  # noqa: E402 - benchmarks/ is not a package
from sft_speed import run_worker  # noqa: E402

SHAPES = {
    "tiny": {"vocab": 300, "seq": 17, "new": 48},  # seq = prompt words + 1
    "realistic": {"vocab": 32000, "seq": 17, "new": 96},
}
BATCH, BETA, LR = 8, 0.1, 1e-5


def hash_reward(prompt: object, response: str) -> float:
    """A cheap deterministic reward in [0, 1) that ties only on identical responses, so both
    sides train on every prompt's pair (a tie would be dropped by alignlab, kept by TRL)."""
    digest = hashlib.sha256(f"{prompt}\0{response}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def worker_alignlab(shape: dict, n: int, folder: Path) -> dict:
    from alignlab.config import load_config
    from alignlab.recipes import online_dpo

    model_dir, prompts = prompt_assets(shape, folder, n)
    dpo = [
        "loss=dpo", f"beta={BETA}", "nll_weight=0", f"train.micro_batch_size={BATCH}",
        f"train.lr={LR}", "train.epochs=1", "train.mixed_precision=no", "model.dtype=fp32",
        "data.eval_fraction=0", "reference.mode=precomputed", "train.tensorboard=false",
        "train.progress=false",
    ]  # fmt: skip
    cfg = load_config(
        online_dpo.OnlineDPOConfig,
        None,
        [
            f"model.path={model_dir}", f"data.path={prompts}", "labeller.source=reward",
            f"labeller.reward={Path(__file__).resolve()}:hash_reward",
            "rounds=1", f"prompts_per_round={n}", "k=2", "pairs=all",
            f"max_new_tokens={shape['new']}", "temperature=1.0", f"batch_size={n}",
            f"dpo_overrides={json.dumps(dpo)}", f"output_dir={folder / 'run'}",
        ],
    )  # fmt: skip
    start = time.perf_counter()
    online_dpo.run(cfg)
    total = time.perf_counter() - start
    pairs = len((folder / "run" / "round_1" / "pairs" / "pairs.jsonl").read_text().splitlines())
    return {"total_s": total, "pairs": pairs}


def worker_trl(shape: dict, n: int, folder: Path) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    model_dir, prompts = prompt_assets(shape, folder, n)

    def reward(prompts, completions, **kwargs):  # noqa: ANN001, ANN202
        return [hash_reward(p, c) for p, c in zip(prompts, completions)]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    trainer = OnlineDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=reward,
        processing_class=tokenizer,
        train_dataset=load_dataset("json", data_files=str(prompts), split="train"),
        args=OnlineDPOConfig(
            output_dir=str(folder / "trl"),
            per_device_train_batch_size=BATCH,
            max_new_tokens=shape["new"],
            num_train_epochs=1,
            learning_rate=LR,
            beta=BETA,
            loss_type="sigmoid",
            temperature=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=False,
            fp16=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            use_vllm=False,
        ),
    )
    start = time.perf_counter()
    trainer.train()
    return {"total_s": time.perf_counter() - start, "pairs": n}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="tiny,realistic")
    parser.add_argument("--prompts", type=int, default=64, help="N prompts (N / 8 DPO steps)")
    parser.add_argument("--worker", choices=["alignlab", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        shape = SHAPES[args.shapes]
        with tempfile.TemporaryDirectory() as tmp:
            run = worker_alignlab if args.worker == "alignlab" else worker_trl
            result = run(shape, args.prompts, Path(tmp))
        result["s_per_step"] = result["total_s"] / (args.prompts / BATCH)
        print(json.dumps(result))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"{args.prompts} prompts x 2 responses, {BATCH} prompts per DPO step")  # fmt: skip
    print("| shape | framework | total s | s per DPO step | pairs trained | peak GB |")
    print("|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        for framework in ("trl", "alignlab"):
            payload = run_worker(
                __file__, [framework, "--shapes", name, "--prompts", str(args.prompts)]
            )
            if "error" in payload:
                print(f"| {name} | {framework} | error: {payload['error']} | | | |")
                continue
            print(
                f"| {name} | {framework} | {payload['total_s']:.1f} | {payload['s_per_step']:.2f} "
                f"| {payload['pairs']} | {payload['peak_gb']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
