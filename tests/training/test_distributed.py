"""torchrun with 2 CPU processes (gloo) and FSDP2 against one process: same losses, weights."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

TOLERANCE = 1e-5  # float summation order differs between one process and a reduce-scatter


def run(nproc, model_dir, data_file, out, *extra):
    args = [
        f"model.path={model_dir}",
        f"data.path={data_file}",
        f"train.output_dir={out}",
        "train.lr=1e-3",
        "train.max_steps=4",
        "train.progress=false",
        "train.tensorboard=false",
        *extra,
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "alignlab.cli", "sft", *args]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        cmd = [
            torchrun,
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "alignlab.cli",
            "sft",
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(out, key="train/loss"):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_two_processes_match_one_process_with_double_batch(tiny_model_dir, sft_file, tmp_path):
    # 16 eval examples = 4 batches of 4: an even count per rank (once hung FSDP2 eval)
    common = ("train.save_every=2", "data.eval_fraction=0.34", "train.eval_every=2")
    run(1, tiny_model_dir, sft_file, tmp_path / "one", "train.micro_batch_size=8", *common)
    result = run(2, tiny_model_dir, sft_file, tmp_path / "two", "train.micro_batch_size=4", *common)
    # only rank 0 prints and writes
    assert result.stdout.count("final model:") == 1
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    for x, y in zip(one, two, strict=True):
        assert abs(x - y) < TOLERANCE
    eval_one, eval_two = (
        losses(tmp_path / "one", "eval/loss"),
        losses(tmp_path / "two", "eval/loss"),
    )
    assert len(eval_one) == len(eval_two) == 2
    for x, y in zip(eval_one, eval_two, strict=True):
        assert abs(x - y) < TOLERANCE
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert a.keys() == b.keys()  # the sharded model saved as one plain HF folder
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=TOLERANCE, rtol=0, msg=key)
    assert (tmp_path / "two" / "checkpoints" / "step-00000002" / "model.safetensors").exists()


def test_ppo_two_processes_smoke(tmp_path):
    """PPO under torchrun: policy and critic FSDP2-sharded, whitening over the gathered batch,
    the ptx term; checkpoints hold the critic, the final critic is one plain HF folder."""
    from transformers import AutoModelForSequenceClassification
    from word_model import build_word_model

    model_dir = build_word_model(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a b", "b c"] * 4))
    (tmp_path / "reward.py").write_text(
        "def contains(prompt, response):\n    return float('a' in response.split())\n"
    )
    ptx = tmp_path / "ptx.jsonl"
    ptx.write_text(json.dumps({"text": "c c c"}) + "\n")
    out = tmp_path / "ppo"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [
        torchrun, "--standalone", "--nproc_per_node=2", "-m", "alignlab.cli", "ppo",
        f"model.path={model_dir}", f"data.path={prompts}",
        f"rl.reward={tmp_path / 'reward.py'}:contains",
        f"train.output_dir={out}", "train.max_steps=3", "train.save_every=2",
        "train.progress=false", "train.tensorboard=false", "rl.max_new_tokens=8",
        "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.num_iterations=2",
        "rl.mini_batch_size=8", f"ptx.path={ptx}", "ptx.coef=1", "ptx.batch_size=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("train/loss", "train/value_loss", "train/ptx_nll", "train/explained_variance"):
        values = losses(out, key)
        assert len(values) == 3 and all(math.isfinite(v) for v in values), key
    assert (out / "checkpoints" / "step-00000002" / "critic.pt").exists()
    AutoModelForSequenceClassification.from_pretrained(out / "critic")
