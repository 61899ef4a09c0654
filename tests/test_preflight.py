"""`check_inputs` finds every field that names a model, tokenizer, reward, data or output folder,
in any recipe's config, and names it by its full dotted key."""

import shutil
from pathlib import Path

import pytest

from alignlab.config import ConfigError, load_config
from alignlab.preflight import check_inputs, check_output_folder
from alignlab.recipes.dpo import DPOConfig
from alignlab.recipes.ppo import PPOConfig
from alignlab.recipes.rest import ReSTConfig


def config(cls, model_dir, tmp_path, *extra):
    (tmp_path / "d.jsonl").touch()
    data = f"data.path={tmp_path / 'd.jsonl'}"
    base = [f"model.path={model_dir}", data, f"train.output_dir={tmp_path / 'run'}"]
    return load_config(cls, None, [*base, *extra])


def test_every_kind_of_field_is_checked_under_its_own_key(tiny_model_dir, tmp_path):
    missing = tmp_path / "missing"
    reward = ["rl.reward=alignlab.lab.rewards:gold_reward"]
    check_inputs(config(PPOConfig, tiny_model_dir, tmp_path, *reward))
    cases = [
        (DPOConfig, [f"reference.path={missing}"], "reference.path="),
        (DPOConfig, [f"model.tokenizer={missing}"], "model.tokenizer="),
        (PPOConfig, [*reward, f"critic.path={missing}"], "critic.path="),
        (PPOConfig, [*reward, f"reference.path={missing}"], "reference.path="),
        (PPOConfig, [*reward, "rl.gold=alignlab.lab.rewards:nope"], "rl.gold="),
        (ReSTConfig, ["sampling.reward=alignlab.lab.rewards:nope"], "sampling.reward="),
        (DPOConfig, [f"train.output_dir={tiny_model_dir / 'config.json'}"], "train.output_dir="),
        (DPOConfig, [f"data.eval_path={missing}.jsonl"], "data.eval_path="),
        (PPOConfig, [*reward, f"ptx.path={missing}.jsonl", "ptx.coef=0.1"], "ptx.path="),
    ]
    for cls, extra, key in cases:
        with pytest.raises(ConfigError, match=f"^{key}"):
            check_inputs(config(cls, tiny_model_dir, tmp_path, *extra))


def test_the_model_folder_holds_the_tokenizer_unless_one_is_given(tiny_model_dir, tmp_path):
    weights_only = shutil.copytree(tiny_model_dir, tmp_path / "weights_only")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (weights_only / name).unlink()
    with pytest.raises(ConfigError, match=r"^model.path=.*weights_only: no tokenizer in it"):
        check_inputs(config(DPOConfig, weights_only, tmp_path))
    check_inputs(config(DPOConfig, weights_only, tmp_path, f"model.tokenizer={tiny_model_dir}"))
    # a reference reads the policy's token ids: it needs no tokenizer of its own
    check_inputs(config(DPOConfig, tiny_model_dir, tmp_path, f"reference.path={weights_only}"))


def test_output_folder(tmp_path):
    check_output_folder(str(tmp_path / "new" / "deeper"), "train.output_dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="a file is in the way"):
        check_output_folder(str(tmp_path / "file"), "train.output_dir")
    with pytest.raises(ConfigError, match=r"file is a file, so the folder cannot be made"):
        check_output_folder(str(tmp_path / "file" / "run"), "train.output_dir")
    # a folder where nothing can be made, whatever os.access says (root passes it everywhere)
    if Path("/proc").is_dir():
        with pytest.raises(ConfigError, match="a folder cannot be made in /proc"):
            check_output_folder("/proc/alignlab-run", "train.output_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe left nothing
