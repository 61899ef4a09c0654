"""Do two checkouts compute the same RL steps? Each RL recipe runs 4 steps on the tests'
word-level model (16 prompts x 8 samples, two passes, mini-batches of 16, micro-batches of 5,
β = 0.04, one thread) under this checkout and under another (`--old`, a folder holding an
alignlab package, e.g. a `git worktree` of an earlier commit), and the largest absolute
difference of each logged metric over the steps is printed. Used to check a refactor of the RL
core (docs/experiments/rl-variants.md).

    git worktree add /tmp/old 31daf71
    python benchmarks/rl_same_steps.py --old /tmp/old --old-kl-key rl.beta
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "ppo": "PPOConfig",
    "grpo": "GRPOConfig",
    "rloo": "RLOOConfig",
    "reinforce_pp": "ReinforcePPConfig",
}
KEYS = ("loss", "reward_mean", "kl_ref", "approx_kl", "clip_fraction", "value_loss", "entropy")
WORKER = """
import importlib, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])  # the checkout under test, before the installed one
sys.path.insert(1, sys.argv[2])  # tests/, for the word-level model
from word_model import build_word_model
from alignlab.config import load_config
recipe, config, kl_key, root = sys.argv[3], sys.argv[4], sys.argv[5], Path(sys.argv[6])
model = build_word_model(root / "policy")
prompts = root / "prompts.jsonl"
prompts.write_text("".join(json.dumps({"prompt": p}) + "\\n" for p in ["a b", "b c", "c a b", "b"] * 4))
reward = root / "reward.py"
reward.write_text("def contains(prompt, response):\\n    return float('a' in response.split())\\n")
module = importlib.import_module(f"alignlab.recipes.{recipe}")
args = [f"model.path={model}", f"data.path={prompts}", f"rl.reward={reward}:contains",
        f"train.output_dir={root / 'run'}", "train.lr=3e-3", "train.max_steps=4",
        "train.progress=false", "train.tensorboard=false", "rl.max_new_tokens=8",
        "rl.prompts_per_step=4", "rl.samples_per_prompt=8", f"{kl_key}=0.04",
        "rl.num_iterations=2", "rl.mini_batch_size=16", "train.micro_batch_size=5"]
module.run(load_config(getattr(module, config), None, args))
rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
print(json.dumps([r for r in rows if "train/loss" in r]))
"""


def run(checkout: Path, recipe: str, kl_key: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        args = [str(checkout), str(ROOT / "tests"), recipe, CONFIGS[recipe], kl_key, tmp]
        done = subprocess.run(
            [sys.executable, "-c", WORKER, *args], capture_output=True, text=True, env=env
        )
        if done.returncode:
            raise RuntimeError(f"{recipe} under {checkout}:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", required=True, help="the other checkout's folder")
    parser.add_argument(
        "--old-kl-key", default="rl.kl_coef", help="its KL option (rl.beta before the rename)"
    )
    parser.add_argument("--recipes", default=",".join(CONFIGS))
    args = parser.parse_args()
    print("| recipe | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
    for recipe in args.recipes.split(","):
        new, old = run(ROOT, recipe, "rl.kl_coef"), run(Path(args.old), recipe, args.old_kl_key)
        cells = []
        for key in KEYS:
            pairs = [(a.get(f"train/{key}"), b.get(f"train/{key}")) for a, b in zip(new, old)]
            if any(a is None or b is None for a, b in pairs):
                cells.append("-")
                continue
            worst = max(abs(a - b) for a, b in pairs)
            scale = max(abs(b) for _, b in pairs)
            cells.append(f"{worst:.1e} (of {scale:.2g})")
        print(f"| {recipe} ({len(new)} / {len(old)} steps) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
