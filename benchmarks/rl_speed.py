"""RL speed and memory: alignlab's GRPO and PPO recipes against TRL's trainers (no vLLM).

Same model (the ~3M-parameter Llama body of `sft_speed.py`, built by its asset builder), same
prompts (random word sequences of 16 tokens), 8 prompts x 4 samples per step, one optimizer
step per rollout, β = 0.04 with a frozen reference on both sides, GRPO loss (sequence mean),
fp32 set explicitly on both sides (TRL's config would otherwise pick bf16 where it can). Two
shapes:
  tiny:      vocabulary ~300,    48 new tokens
  realistic: vocabulary 32,000,  96 new tokens
Responses rarely hit EOS with a random model, so nearly every response has the full length on
both sides. Each (framework, shape) runs in a fresh subprocess; peak memory is that process's
max RSS. Seconds/step are medians over the steps after the first (warm-up), split into
generation (sampling plus scoring: reward, old/reference log-probs) and update (the rest).
TRL's generation time is measured around `_generate_and_score_completions`, ours from the
recipe's metrics (generation_s + reward_s + reference_s, the old log-prob pass is inside
generation_s).

PPO (`--algos ppo`): the same 32 samples per step (TRL's PPO samples one response per prompt,
so it gets 32 prompts per step; alignlab 8 x 4), a reward model on both sides (the model's
body with a random head, saved with `save_reward_folder`) that also initialises the critic,
one PPO epoch over one mini-batch, β = 0.04 in the reward (k1), GAE γ = 1, λ = 0.95. alignlab's
update time holds the critic's value pass and its update. TRL removed `PPOTrainer` in 1.x
(neither `trl` nor `trl.experimental` has it in 1.16): the TRL PPO row then says so instead of
timing anything. The TRL PPO worker is written for the 0.12-0.2x API and untested here.

DAPO (`--algos dapo`) against TRL's `loss_type="dapo"` (token-level normalisation) with
clip-higher (ε 0.2 / 0.28) on both sides and no KL term (β = 0, no reference) on both;
alignlab's dynamic sampling and overlong filtering off (`max_draws=0`, `mask_truncated=false`),
as TRL's GRPOTrainer has neither by default.

    python benchmarks/rl_speed.py --shapes tiny
    python benchmarks/rl_speed.py --shapes realistic --steps 5 --algos grpo,dapo
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

from sft_speed import make_assets, run_worker, trl_clock  # noqa: E402 - not a package

SHAPES = {
    "tiny": {"vocab": 300, "seq": 17, "new": 48},  # seq = prompt words + 1
    "realistic": {"vocab": 32000, "seq": 17, "new": 96},
}
PROMPTS, SAMPLES, BETA, LR = 8, 4, 0.04, 1e-5


def length_reward(prompt: object, response: str) -> float:
    """A cheap deterministic reward: the fraction of response words that are 'w1'."""
    words = response.split()
    return sum(w == "w1" for w in words) / max(len(words), 1)


def prompt_assets(shape: dict, folder: Path, n: int) -> tuple[Path, Path]:
    """`make_assets`' model and `n` of its texts as a prompts file ({"prompt": text})."""
    model_dir, data = make_assets(shape, folder, n)
    prompts = folder / "prompts.jsonl"
    with prompts.open("w") as handle:
        for line in data.read_text().splitlines():
            handle.write(json.dumps({"prompt": json.loads(line)["text"]}) + "\n")
    return model_dir, prompts


def reward_model(model_dir: Path, folder: Path) -> Path:
    """The policy's body with a seeded random head, as a reward-model folder (PPO runs)."""
    import torch

    from alignlab.config import ModelConfig
    from alignlab.models.loading import load_tokenizer
    from alignlab.models.reward import load_reward_model
    from alignlab.training.checkpoint import save_reward_folder
    from alignlab.training.distributed import Runtime

    cfg = ModelConfig(path=str(model_dir))
    tokenizer = load_tokenizer(cfg)
    cpu = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    model = load_reward_model(cfg, tokenizer, seed=1)
    return save_reward_folder(folder / "rm", model, tokenizer, cpu)


def worker_alignlab(shape: dict, steps: int, folder: Path, algo: str) -> dict:
    from alignlab.config import load_config
    from alignlab.recipes import dapo, grpo, ppo

    model_dir, prompts = prompt_assets(shape, folder, PROMPTS * steps)
    extra = []
    if algo == "ppo":
        recipe, config = ppo, ppo.PPOConfig
        reward = str(reward_model(model_dir, folder))  # the critic starts from it too
    elif algo == "dapo":  # what TRL's loss_type="dapo" has: clip-higher, token-mean, no KL
        recipe, config = dapo, dapo.DAPOConfig
        reward = f"{Path(__file__).resolve()}:length_reward"
        extra = ["clip_eps_high=0.28", "max_draws=0", "mask_truncated=false"]
    else:
        recipe, config = grpo, grpo.GRPOConfig
        reward = f"{Path(__file__).resolve()}:length_reward"
    beta = 0.0 if algo == "dapo" else BETA
    cfg = load_config(
        config,
        None,
        [
            f"model.path={model_dir}",
            f"data.path={prompts}",
            f"rl.reward={reward}",
            f"rl.prompts_per_step={PROMPTS}",
            f"rl.samples_per_prompt={SAMPLES}",
            f"rl.max_new_tokens={shape['new']}",
            f"rl.generation_batch_size={PROMPTS * SAMPLES}",
            f"rl.kl_coef={beta}",
            f"train.micro_batch_size={PROMPTS * SAMPLES}",
            f"train.output_dir={folder / 'run'}",
            f"train.max_steps={steps}",
            f"train.lr={LR}",
            "train.mixed_precision=no",
            "model.dtype=fp32",
            "train.tensorboard=false",
            "train.progress=false",
            *extra,
        ],
    )
    recipe.run(cfg)
    rows = [
        json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    stamps = [r["time"] for r in rows]
    steps_s = [b - a for a, b in zip(stamps, stamps[1:])]
    gen = [r["train/generation_s"] + r["train/reward_s"] + r["train/reference_s"] for r in rows]
    lengths = [r["train/response_length"] for r in rows]
    return {"step": steps_s, "generation": gen[1:], "length": statistics.mean(lengths)}


def worker_trl_ppo(shape: dict, steps: int, folder: Path) -> dict:
    """TRL's PPOTrainer (0.12-0.2x API, untested here); raises when this TRL has none."""
    import importlib

    import torch
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    for name in ("trl", "trl.experimental.ppo"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "PPOTrainer"):
            break
    else:
        raise RuntimeError(
            f"TRL {trl.__version__} has no PPOTrainer (not in trl, nor trl.experimental): "
            "no TRL PPO to compare against"
        )
    model_dir, prompts = prompt_assets(shape, folder, PROMPTS * steps * SAMPLES)
    rm_dir = reward_model(model_dir, folder)
    clock, stamps = trl_clock()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    rows = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(r)["input_ids"] for r in rows]})

    def causal_lm():  # noqa: ANN202
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def scorer():  # noqa: ANN202
        return AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1)

    batch = PROMPTS * SAMPLES  # one response per prompt in TRL's PPO
    trainer = module.PPOTrainer(
        args=module.PPOConfig(
            output_dir=str(folder / "trl"),
            per_device_train_batch_size=batch,
            num_mini_batches=1,
            num_ppo_epochs=1,
            total_episodes=batch * steps,
            response_length=shape["new"],
            kl_coef=BETA,
            gamma=1.0,
            lam=0.95,
            learning_rate=LR,
            temperature=1.0,
            report_to=[],
            use_cpu=True,
            gradient_checkpointing=False,  # TRL's configs default to True; alignlab's to False
            bf16=False,
            fp16=False,
            save_strategy="no",
            logging_steps=1,
        ),
        processing_class=tokenizer,
        model=causal_lm(),
        ref_model=causal_lm(),
        reward_model=scorer(),
        value_model=scorer(),
        train_dataset=dataset,
        callbacks=[clock],
    )
    trainer.train()
    return {
        "step": [b - a for a, b in zip(stamps, stamps[1:])],
        "generation": [float("nan")],  # not separable from outside its loop
        "length": float("nan"),
    }


def worker_trl(shape: dict, steps: int, folder: Path, algo: str = "grpo") -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    model_dir, prompts = prompt_assets(shape, folder, PROMPTS * steps)
    clock, stamps = trl_clock()
    generation: list[float] = []

    def reward(prompts, completions, **kwargs):  # noqa: ANN001, ANN202
        return [length_reward(p, c) for p, c in zip(prompts, completions)]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_funcs=reward,
        processing_class=tokenizer,
        train_dataset=load_dataset("json", data_files=str(prompts), split="train"),
        args=GRPOConfig(
            output_dir=str(folder / "trl"),
            per_device_train_batch_size=PROMPTS * SAMPLES,
            num_generations=SAMPLES,
            max_completion_length=shape["new"],
            max_steps=steps,
            learning_rate=LR,
            beta=0.0 if algo == "dapo" else BETA,
            loss_type=algo,  # "grpo", or "dapo": token-level normalisation
            epsilon=0.2,
            epsilon_high=0.28 if algo == "dapo" else 0.2,
            temperature=1.0,
            top_p=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            gradient_checkpointing=False,  # TRL's configs default to True; alignlab's to False
            bf16=False,  # explicit fp32 on both sides
            fp16=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            use_vllm=False,
        ),
        callbacks=[clock],
    )
    original = trainer._generate_and_score_completions

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        result = original(*args, **kwargs)
        generation.append(time.perf_counter() - start)
        return result

    trainer._generate_and_score_completions = timed
    trainer.train()
    lengths = [
        r["completions/mean_length"]
        for r in trainer.state.log_history
        if "completions/mean_length" in r
    ]
    return {
        "step": [b - a for a, b in zip(stamps, stamps[1:])],
        "generation": generation[1:],
        "length": statistics.mean(lengths) if lengths else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6, help="steps per run (first is warm-up)")
    parser.add_argument("--shapes", default="tiny,realistic")
    parser.add_argument("--algos", default="grpo,dapo,ppo", help="comma-separated: grpo, dapo, ppo")
    parser.add_argument("--worker", choices=["alignlab", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        shape, algo = SHAPES[args.shapes], args.algos
        with tempfile.TemporaryDirectory() as tmp:
            if args.worker == "alignlab":
                times = worker_alignlab(shape, args.steps, Path(tmp), algo)
            elif algo == "ppo":
                times = worker_trl_ppo(shape, args.steps, Path(tmp))
            else:
                times = worker_trl(shape, args.steps, Path(tmp), algo)
        step = statistics.median(times["step"])
        generation = statistics.median(times["generation"])
        print(
            json.dumps(
                {
                    "s_per_step": step,
                    "generation_s": generation,
                    "update_s": step - generation,
                    "mean_response_tokens": times["length"],
                    "steps_timed": len(times["step"]),
                }
            )
        )
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"{PROMPTS} prompts x {SAMPLES} samples per step")  # fmt: skip
    rows = []
    for shape_name in args.shapes.split(","):
        for algo in args.algos.split(","):
            results = {}
            for framework in ("trl", "alignlab"):
                payload = run_worker(
                    __file__,
                    [
                        framework,
                        "--shapes",
                        shape_name,
                        "--algos",
                        algo,
                        "--steps",
                        str(args.steps),
                    ],
                )
                results[framework] = payload
                print(f"  {shape_name:9s} {algo:4s} {framework:8s} {payload}", flush=True)
            rows.append((shape_name, algo, results))

    print(
        "\n| shape | algo | framework | s/step | generation s | update s | peak GB "
        "| response tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for shape_name, algo, results in rows:
        for framework, r in results.items():
            if "error" in r:
                print(f"| {shape_name} | {algo} | {framework} | error: {r['error']} | | | | |")
                continue
            print(
                f"| {shape_name} | {algo} | {framework} | {r['s_per_step']:.2f} "
                f"| {r['generation_s']:.2f} | {r['update_s']:.2f} | {r['peak_gb']:.2f} "
                f"| {r['mean_response_tokens']:.1f} |"
            )
        if all("error" not in r for r in results.values()):
            trl, ours = results["trl"], results["alignlab"]
            print(
                f"| {shape_name} | {algo} | **alignlab vs TRL** "
                f"| **{trl['s_per_step'] / ours['s_per_step']:.2f}x** "
                f"| {trl['generation_s'] / ours['generation_s']:.2f}x "
                f"| {trl['update_s'] / max(ours['update_s'], 1e-9):.2f}x "
                f"| {ours['peak_gb'] / trl['peak_gb']:.2f}x memory | |"
            )


if __name__ == "__main__":
    main()
