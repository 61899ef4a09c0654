"""The VLM reward model on a tiny LLaVA and a tiny shapes export: pairs learned through the text
RM loop, what trains, the final folder (a VLM folder with its head) as an RL reward that ranks
chosen above rejected, margin and soft-label columns, resume after a kill, bad input as one
line."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from vlm_runs import changed_parts, metric_rows, same_weights, tiny_vlm_world

from alignlab.cli import main
from alignlab.config import load_config
from alignlab.data.schema import DataError
from alignlab.models.vlm import load_vlm_processor
from alignlab.models.vlm_reward import HEAD_FILE, VlmRewardFn, load_vlm_reward
from alignlab.recipes.rm import label_pairs
from alignlab.recipes.vlm_dpo import read_pairs
from alignlab.recipes.vlm_rm import VlmRMConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tiny LLaVA folder, shapes export folder with preference.jsonl)."""
    root = tmp_path_factory.mktemp("vlm_rm")
    model, shapes = tiny_vlm_world(root, n_train=8)
    return model, shapes


def args(model, data, out, *extra):
    return [
        "vlm_rm", "--config", "vlm_rm_lab", f"model.path={model}", f"data.path={data}",
        f"train.output_dir={out}", "train.max_steps=3", "train.micro_batch_size=4",
        "train.lr=1e-3", "train.warmup_ratio=0", "train.log_every=1", "train.progress=false",
        "train.tensorboard=false", "data.eval_fraction=0", "data.max_examples=8", *extra,
    ]  # fmt: skip


def rollouts(shapes):
    """The preference pairs as an RL reward function sees them: (prompts, chosen, rejected,
    extras with the images' absolute paths)."""
    records = [json.loads(line) for line in (shapes / "preference.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in records]
    chosen = [r["chosen"][0]["content"][0]["text"] for r in records]
    rejected = [r["rejected"][0]["content"][0]["text"] for r in records]
    extras = [{"images": [str(shapes / r["images"][0])]} for r in records]
    return prompts, chosen, rejected, extras


def test_rm_learns_its_pairs_and_scores_rollouts(world, tmp_path):
    # the global batch is the data: every step sees the same 8 pairs
    model, shapes = world
    out = tmp_path / "rm"
    extra = ("train.max_steps=12", "train.micro_batch_size=8", "train.schedule=constant")
    extra += ("reward.center_rewards_coef=0",)
    assert main(args(model, shapes / "preference.jsonl", out, *extra)) == 0
    rows = metric_rows(out)
    assert rows[0]["train/accuracy"] < 1.0 and rows[-1]["train/accuracy"] == 1.0
    assert rows[-1]["train/loss"] < 0.5 * rows[0]["train/loss"], [r["train/loss"] for r in rows]
    assert changed_parts(model, out / "final") == {"tower": False, "projector": True, "llm": True}
    AutoProcessor.from_pretrained(out / "final")
    # the final folder as an RL reward: every chosen answer above its rejected one
    prompts, chosen, rejected, extras = rollouts(shapes)
    reward_fn = VlmRewardFn(out / "final", batch_size=4, device="cpu")
    good, bad = reward_fn(prompts, chosen, extras), reward_fn(prompts, rejected, extras)
    assert all(g > b for g, b in zip(good, bad)), (good, bad)


def test_margin_and_soft_label_columns_of_vlm_pairs(world, tmp_path):
    model, shapes = world
    records = [json.loads(line) for line in (shapes / "preference.jsonl").read_text().splitlines()]
    for i, record in enumerate(records):
        record.update(images=[str(shapes / record["images"][0])], p=i / 8, gap=float(i))
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = load_config(VlmRMConfig, None, args(model, data, tmp_path / "o")[3:])
    processor = load_vlm_processor(cfg.model)
    rows, _ = read_pairs(cfg.data, processor)
    cfg.reward.soft_label = "p"
    label_pairs(rows, [r["chosen_row"].record for r in rows], cfg.reward)
    assert [r["target"] for r in rows] == [i / 8 for i in range(8)]
    assert [r["margin"] for r in rows] == [0.0] * 8
    cfg.reward.soft_label, cfg.reward.margin, cfg.reward.margin_scale = "", "gap", 0.5
    label_pairs(rows, [r["chosen_row"].record for r in rows], cfg.reward)
    assert [r["margin"] for r in rows] == [i / 2 for i in range(8)]
    assert [r["target"] for r in rows] == [1.0] * 8
    # a run with soft labels trains through the same loop
    out = tmp_path / "soft"
    assert main(args(model, data, out, "train.max_steps=2", "reward.soft_label=p")) == 0
    assert len(metric_rows(out)) == 2
    records[5]["p"] = 1.5
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg.reward.margin, cfg.reward.soft_label = "", "p"
    with pytest.raises(DataError, match=r"labelled.jsonl:6.*probability in \[0, 1\]"):
        label_pairs(
            rows, [r["chosen_row"].record for r in read_pairs(cfg.data, processor)[0]], cfg.reward
        )


def test_killed_run_resumes_to_the_same_result(world, tmp_path, capsys):
    model, shapes = world
    data = shapes / "preference.jsonl"
    common = ("train.save_every=2", "train.keep_checkpoints=5")
    ref = tmp_path / "ref"
    assert main(args(model, data, ref, *common)) == 0
    out = tmp_path / "run"
    env = {**os.environ, "ALIGNLAB_CRASH": "step:3", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "alignlab.cli", *args(model, data, out, *common)]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    checkpoint = out / "checkpoints" / "step-00000002"
    AutoModelForImageTextToText.from_pretrained(checkpoint)  # a VLM folder with the head beside
    load_vlm_reward(checkpoint)
    assert not (out / "final").exists()
    capsys.readouterr()
    assert main(args(model, data, out, *common, "train.resume=true")) == 0
    assert "resuming from" in capsys.readouterr().out
    loss = [(r["step"], r["train/loss"]) for r in metric_rows(out)]
    assert loss == [(r["step"], r["train/loss"]) for r in metric_rows(ref)]
    assert same_weights(out / "final", ref / "final")
    head, ref_head = (load_file(str(d / "final" / HEAD_FILE)) for d in (out, ref))
    assert torch.equal(head["weight"], ref_head["weight"])


def test_bad_input_is_one_line(world, tmp_path, capsys):
    model, shapes = world
    assert main(args(model, tmp_path / "missing.jsonl", tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "data.path" in err and "Traceback" not in err
    sft_rows = shapes / "sft.jsonl"  # SFT rows, not pairs: the error names the field and line
    assert main(args(model, sft_rows, tmp_path / "o")) != 0
    err = capsys.readouterr().err
    assert "sft.jsonl:1" in err and "prompt" in err and "Traceback" not in err
    off = ("data.completion_only_loss=false",)
    assert main(args(model, shapes / "preference.jsonl", tmp_path / "o", *off)) == 2
    assert "completion_only_loss" in capsys.readouterr().err
    both = ("reward.margin=gap", "reward.soft_label=p")
    assert main(args(model, shapes / "preference.jsonl", tmp_path / "o", *both)) == 2
    assert "choose one" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
