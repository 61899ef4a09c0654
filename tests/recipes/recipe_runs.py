"""Running a recipe as the user does, in a fresh process (optionally killed at a step) or
under torchrun, and comparing what two runs wrote: shared by the recipe tests."""

import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file

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


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def series(out, key):
    return [r[key] for r in records(out) if key in r]


def assert_same_weights(a, b, atol=1e-6):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)
