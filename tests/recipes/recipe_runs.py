"""Running a recipe as the user does, in a fresh process (optionally killed at a step) or
under torchrun, and comparing what two runs wrote: shared by the recipe tests."""

import json
import os
import shutil
import subprocess
import sys

RUNNER = """
import importlib, sys
from alignlab.config import load_config
module = importlib.import_module("alignlab.recipes." + sys.argv[1])
module.run(load_config(getattr(module, sys.argv[2]), None, sys.argv[3:]))
"""


def launch(recipe, config, args, crash=None):
    """`recipe`.run in a new process; `crash="step:3"` kills it after step 3 (exit -9)."""
    env = {**os.environ, "ALIGNLAB_CRASH": crash or "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", RUNNER, recipe, config, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def launch_two(recipe, config, args, tmp_path):
    """`recipe`.run under torchrun with 2 CPU processes (gloo)."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(runner), recipe, config, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


# Plain SGD without clipping, at an lr that moves these tiny models visibly, for runs compared
# with `weights.assert_same_updates` (see tests/weights.py for why not AdamW).
SGD = ("train.optimizer=sgd", "train.lr=0.5", "train.max_grad_norm=0")


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def series(out, key):
    return [r[key] for r in records(out) if key in r]
