"""VLM GRPO on a tiny LLaVA and a tiny shapes export: the rollout's forwards see the images
the sampler saw, the reward rises, the shapes gold as reward, resume after a kill, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from vlm_runs import changed_parts, metric_rows, same_weights, tiny_vlm_world

from alignlab.cli import main
from alignlab.models.lm import TokenLogProbs
from alignlab.rl.config import PromptDataConfig
from alignlab.rl.prompts import load_prompt_rows
from alignlab.rl.rollout import rollout, token_logps

REWARD_PY = '''
def has_e(prompt, response):
    """1 when the answer holds the letter e: learnable by a random tiny model."""
    return float("e" in response)
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tiny LLaVA folder, shapes export folder, reward .py file)."""
    root = tmp_path_factory.mktemp("vlm_grpo")
    model, shapes = tiny_vlm_world(root, n_train=8)
    reward = root / "reward.py"
    reward.write_text(REWARD_PY)
    return model, shapes, reward


def args(world, out, *extra):
    model, shapes, reward = world
    return [
        "vlm_grpo", "--config", "vlm_grpo_lab", f"model.path={model}",
        f"data.path={shapes / 'train_prompts.jsonl'}", f"rl.reward={reward}:has_e",
        f"train.output_dir={out}", "train.max_steps=2", "rl.prompts_per_step=4",
        "rl.samples_per_prompt=4", "rl.max_new_tokens=6", "train.lr=1e-2", "train.warmup_ratio=0",
        "train.log_every=1", "train.progress=false", "train.tensorboard=false", *extra,
    ]  # fmt: skip


def test_rollout_forwards_see_the_sampled_images(world):
    model_dir, shapes, _ = world
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    data = PromptDataConfig(path=str(shapes / "train_prompts.jsonl"))
    rows = load_prompt_rows(data, processor.tokenizer)[:3]
    assert all(os.path.isabs(path) for row in rows for path in row.extras["images"])
    images = [row.load_images() for row in rows]
    roll = rollout(
        model, processor, [row.prompt for row in rows], samples_per_prompt=2, max_new_tokens=5,
        seed=3, batch_size=4, sampler_logps=True, images=images,
    )  # fmt: skip
    assert len(roll) == 6 and len(roll.vision) == 3
    # the teacher-forced pass (the one the loss trains through) and the sampler agree: both
    # saw the same image for every sample, in the order of the rows
    mask = roll.mask
    scale = roll.old_logps[mask].abs().max().item()
    tolerance = 64 * torch.finfo(torch.float32).eps * max(scale, 1.0)
    diff = (roll.old_logps - roll.sampler_logps)[mask].abs().max().item()
    assert diff <= tolerance, (diff, tolerance)
    # ... and the images matter: the same tokens after other images score otherwise
    roll.vision = [roll.vision[1], roll.vision[2], roll.vision[0]]
    swapped = token_logps(TokenLogProbs(model), roll, batch_size=4)
    assert (swapped - roll.old_logps)[mask].abs().max().item() > 100 * tolerance


def test_inline_prompt_images_load_and_reach_the_reward_as_bytes(world, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    model_dir, shapes, _ = world
    processor = AutoProcessor.from_pretrained(model_dir)
    files = load_prompt_rows(
        PromptDataConfig(path=str(shapes / "train_prompts.jsonl")), processor.tokenizer
    )[:2]
    records = [
        json.loads(line) for line in (shapes / "train_prompts.jsonl").read_text().splitlines()[:2]
    ]
    for record, row in zip(records, files):
        record["images"] = [
            {"bytes": Path(p).read_bytes(), "path": None} for p in row.extras["images"]
        ]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "inline.parquet")
    inline = load_prompt_rows(
        PromptDataConfig(path=str(tmp_path / "inline.parquet")), processor.tokenizer
    )
    for a, b in zip(files, inline):
        assert b.extras["images"] == [Path(p).read_bytes() for p in a.extras["images"]]
        assert [x.tobytes() for x in a.load_images()] == [x.tobytes() for x in b.load_images()]


def test_grpo_raises_its_reward_and_trains_the_chosen_parts(world, tmp_path):
    out = tmp_path / "grpo"
    extra = ("train.max_steps=12", "rl.kl_coef=0", "rl.samples_per_prompt=8")
    assert main(args(world, out, *extra)) == 0
    rewards = [r["train/reward_mean"] for r in metric_rows(out, "train/reward_mean")]
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.2, rewards
    model_dir = world[0]
    assert changed_parts(model_dir, out / "final") == {
        "tower": False, "projector": True, "llm": True
    }  # fmt: skip
    AutoProcessor.from_pretrained(out / "final")


def test_shapes_gold_is_the_reward(world, tmp_path):
    from alignlab.lab.shapes.reward import gold_reward
    from alignlab.lab.shapes.text import ShapesPrompt

    _, shapes, _ = world
    rows = [json.loads(line) for line in (shapes / "train_prompts.jsonl").read_text().splitlines()]
    for row in rows:
        prompt = ShapesPrompt.from_record(row)
        extras = {k: v for k, v in row.items() if k != "prompt"}
        assert gold_reward(row["prompt"], prompt.answer, **extras) == 1.0
    out = tmp_path / "gold"
    gold = ("rl.reward=alignlab.lab.shapes.reward:gold_reward",)
    assert main([*args(world, out), *gold]) == 0
    values = [r["train/reward_mean"] for r in metric_rows(out, "train/reward_mean")]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)


def test_a_vision_reward_model_is_the_reward(world, tmp_path):
    from alignlab.config import ModelConfig
    from alignlab.models.vlm_reward import load_vlm_reward_model
    from alignlab.training.checkpoint import save_hf_folder
    from alignlab.training.distributed import init_runtime

    model_dir = world[0]
    rm, processor = load_vlm_reward_model(ModelConfig(path=str(model_dir)), seed=3)
    rm_dir = save_hf_folder(tmp_path / "rm", rm, processor, init_runtime())
    out = tmp_path / "rm_grpo"
    assert main([*args(world, out), f"rl.reward={rm_dir}"]) == 0
    values = [r["train/reward_mean"] for r in metric_rows(out, "train/reward_mean")]
    assert len(values) == 2 and all(v != 0.0 for v in values)  # the head's scores, not 0 / 1


def test_an_ensemble_of_vision_reward_models_is_the_reward(world, tiny_model_dir, tmp_path):
    from alignlab.config import ConfigError, ModelConfig
    from alignlab.models.vlm_reward import VlmRewardFn, load_vlm_reward_model
    from alignlab.rl.rewards import build_reward_fn
    from alignlab.training.checkpoint import save_hf_folder
    from alignlab.training.distributed import init_runtime

    model_dir, shapes, _ = world
    folders = []
    for seed in (3, 4):  # two heads: two members that disagree
        rm, processor = load_vlm_reward_model(ModelConfig(path=str(model_dir)), seed=seed)
        folders.append(save_hf_folder(tmp_path / f"rm-{seed}", rm, processor, init_runtime()))
    rows = load_prompt_rows(PromptDataConfig(path=str(shapes / "train_prompts.jsonl")), None)[:3]
    prompts, extras = [r.prompt for r in rows], [r.extras for r in rows]
    responses = ["A red circle.", "Two.", "No."]
    members = torch.tensor(
        [VlmRewardFn(f, device="cpu")(prompts, responses, extras) for f in folders]
    )
    spec = ",".join(str(f) for f in folders)
    for how, expected in (("mean", members.mean(0)), ("min", members.min(0).values)):
        fn = build_reward_fn(spec, aggregate=how, device="cpu")
        got = torch.tensor(fn(prompts, responses, extras), dtype=members.dtype)
        torch.testing.assert_close(
            got, expected.to(got.dtype), rtol=0, atol=1e-6 * (1 + members.abs().max().item())
        )
    with pytest.raises(ConfigError, match="mixes image-text reward models"):
        build_reward_fn(f"{folders[0]},{tiny_model_dir}")
    out = tmp_path / "ensemble_grpo"
    assert main([*args(world, out), f"rl.reward={spec}", "rl.reward_aggregate=lcb"]) == 0
    assert len(metric_rows(out, "train/reward_mean")) == 2


def test_killed_run_resumes_to_the_same_result(world, tmp_path, capsys):
    common = ("train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=5")
    ref = tmp_path / "ref"
    assert main(args(world, ref, *common)) == 0
    out = tmp_path / "run"
    env = {**os.environ, "ALIGNLAB_CRASH": "step:3", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "alignlab.cli", *args(world, out, *common)]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    AutoProcessor.from_pretrained(out / "checkpoints" / "step-00000002")
    capsys.readouterr()
    assert main(args(world, out, *common, "train.resume=true")) == 0
    assert "resuming from" in capsys.readouterr().out
    key = "train/reward_mean"
    assert [r[key] for r in metric_rows(out, key)] == [r[key] for r in metric_rows(ref, key)]
    assert same_weights(out / "final", ref / "final")


def test_bad_input_is_one_line(world, tmp_path, capsys):
    _, shapes, _ = world
    bad = dict(json.loads((shapes / "train_prompts.jsonl").read_text().splitlines()[0]))
    bad["images"] = ["images/missing.png"]
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(bad) + "\n")
    assert main([*args(world, tmp_path / "o"), f"data.path={data}"]) != 0
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "images[0]" in err and "Traceback" not in err
    assert main([*args(world, tmp_path / "o"), "data.max_prompt_tokens=64"]) != 0
    assert "max_prompt_tokens" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_text_recipe_refuses_image_prompts(world, tiny_model_dir, tmp_path, capsys):
    _, shapes, reward = world
    text = [
        "grpo", f"model.path={tiny_model_dir}", f"data.path={shapes / 'train_prompts.jsonl'}",
        f"rl.reward={reward}:has_e", f"train.output_dir={tmp_path / 'o'}",
        "train.progress=false", "train.tensorboard=false",
    ]  # fmt: skip
    assert main(text) == 2
    err = capsys.readouterr().err
    assert "carry images" in err and "vlm_grpo" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
