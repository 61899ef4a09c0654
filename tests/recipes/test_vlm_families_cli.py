"""Every vision recipe through the CLI on Gemma 3 and Idefics3 folders (tiny, from their
configs, real processors and templates; tests/vlm_families.py): what trains, and final folders
that the Auto classes load. Qwen2-VL's processor needs torchvision to load from a folder, so it
is covered in memory (tests/models/test_vlm_families.py) and by a clear error here."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from vlm_families import build
from vlm_runs import changed_parts, metric_rows

from alignlab.cli import main
from alignlab.config import ModelConfig, UserInputError
from alignlab.models.vlm import load_vlm_processor
from alignlab.models.vlm_tiny import save_vlm

REWARD_PY = """
def has_e(prompt, response):
    return float("e" in response)
"""

COMMON = (
    "train.lr=1e-2", "train.warmup_ratio=0", "train.log_every=1", "train.progress=false",
    "train.tensorboard=false", "train.micro_batch_size=4",
)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from alignlab.lab.shapes.export import export_shapes  # the lab in tests only

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vlm_families")
    folders = {name: save_vlm(root / name, *build(name)) for name in ("gemma3", "idefics3")}
    export_shapes(root / "shapes", n_train=8, n_valid=0, n_heldout=0, image_size=64)
    (root / "reward.py").write_text(REWARD_PY)
    return folders, root


def _run(recipe, preset, model, data, out, *extra):
    command = [recipe, "--config", preset, f"model.path={model}", f"data.path={data}",
               f"train.output_dir={out}", *COMMON, *extra]  # fmt: skip
    assert main(command) == 0
    assert metric_rows(out), "no step was logged"
    return out / "final"


def _loads(final):
    AutoModelForImageTextToText.from_pretrained(final)
    AutoProcessor.from_pretrained(final)


@pytest.mark.parametrize("family", ["gemma3", "idefics3"])
def test_stage1_then_stage2_train_their_parts(world, tmp_path, family):
    folders, root = world
    captions, sft = root / "shapes" / "captions.jsonl", root / "shapes" / "sft.jsonl"
    stage1 = _run("vlm_sft", "vlm_sft_stage1", folders[family], captions, tmp_path / "s1",
                  "train.max_steps=2")  # fmt: skip
    assert changed_parts(folders[family], stage1) == {
        "tower": False, "projector": True, "llm": False,
    }  # fmt: skip
    stage2 = _run("vlm_sft", "vlm_sft_stage2", stage1, sft, tmp_path / "s2", "train.max_steps=2")
    assert changed_parts(stage1, stage2) == {"tower": False, "projector": True, "llm": True}
    _loads(stage2)


@pytest.mark.parametrize("family", ["gemma3", "idefics3"])
def test_dpo_with_lora_and_grpo_and_rm(world, tmp_path, family):
    folders, root = world
    shapes, model = root / "shapes", folders[family]
    lora = ("model.lora.enabled=true", "model.lora.r=4", "reference.mode=adapter")
    dpo = _run("vlm_dpo", "vlm_dpo_lab", model, shapes / "preference.jsonl", tmp_path / "dpo",
               "train.max_steps=2", "data.eval_fraction=0", *lora)  # fmt: skip
    assert changed_parts(model, dpo) == {"tower": False, "projector": True, "llm": True}
    _loads(dpo)
    grpo = _run("vlm_grpo", "vlm_grpo_lab", model, shapes / "train_prompts.jsonl",
                tmp_path / "grpo", f"rl.reward={root / 'reward.py'}:has_e", "train.max_steps=2",
                "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.max_new_tokens=4")  # fmt: skip
    assert changed_parts(model, grpo)["llm"]
    rm = _run("vlm_rm", "vlm_rm_lab", model, shapes / "preference.jsonl", tmp_path / "rm",
              "train.max_steps=2", "data.eval_fraction=0")  # fmt: skip
    assert (rm / "reward_head.safetensors").is_file()


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here"
)
def test_a_qwen2_vl_folder_without_torchvision_is_one_clear_error(tmp_path):
    folder = save_vlm(tmp_path / "qwen2-vl", *build("qwen2_vl"))
    with pytest.raises(UserInputError, match="torchvision"):
        load_vlm_processor(ModelConfig(path=str(folder)))
