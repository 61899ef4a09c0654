"""Model folders and hub ids are checked before loading; what slips through to
`from_pretrained` becomes one line naming the source."""

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import save_file

from alignlab.config import ConfigError, ModelConfig, UserInputError
from alignlab.models import folders
from alignlab.models.folders import check_model_source, safetensors_problem
from alignlab.models.loading import load_model, load_tokenizer


@pytest.fixture
def copy_of(tiny_model_dir, tmp_path):
    def copy(name="copy"):
        return shutil.copytree(tiny_model_dir, tmp_path / name)

    return copy


def test_safetensors_header_accounts_for_every_byte(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(5)}, path)
    assert safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert (
        safetensors_problem(path) == f"{len(data) - 1} bytes, but its header describes {len(data)}"
    )
    path.write_bytes(data + b"\0")
    assert "but its header describes" in safetensors_problem(path)
    path.write_bytes(data[:20])
    assert "its header alone claims" in safetensors_problem(path)
    path.write_bytes(b"\x02\0\0\0\0\0\0\0[]")
    assert "not the JSON table" in safetensors_problem(path)
    path.write_bytes(b"\x01")
    assert "shorter than the 8-byte header length" in safetensors_problem(path)


def test_a_complete_folder_passes_and_each_broken_part_is_named(copy_of):
    good = copy_of("good")
    check_model_source(str(good), "model.path", tokenizer=True)
    broken = copy_of("broken")
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    with pytest.raises(ConfigError, match=r"model.path=.*broken: no tokenizer in it"):
        check_model_source(str(broken), "model.path", tokenizer=True)
    check_model_source(str(broken), "reference.path")  # a reference needs no tokenizer
    (broken / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="reference.path=.*: no weights in it"):
        check_model_source(str(broken), "reference.path")
    (broken / "config.json").write_text('{"architectures": []}')
    with pytest.raises(ConfigError, match="config.json has no model_type"):
        check_model_source(str(broken), "reference.path")
    with pytest.raises(ConfigError, match="a file, not a model folder"):
        check_model_source(str(broken / "config.json"), "model.path")


def test_sharded_weights_are_checked_shard_by_shard(copy_of):
    folder = copy_of()
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    check_model_source(str(folder), "model.path")
    index["weight_map"]["b"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ConfigError, match=r"model-00002-of-00002.safetensors \(listed in model.safetensors"
    ):
        check_model_source(str(folder), "model.path")


def test_a_reward_model_must_be_a_one_label_classifier(copy_of):
    folder = copy_of()
    with pytest.raises(ConfigError, match=r"rl.reward=.*: not a reward model \(LlamaForCausalLM\)"):
        check_model_source(str(folder), "rl.reward", reward_model=True)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="a classifier with 2 labels; a reward model has 1"):
        check_model_source(str(folder), "rl.reward", reward_model=True)
    config["id2label"] = {"0": "LABEL_0"}
    (folder / "config.json").write_text(json.dumps(config))
    check_model_source(str(folder), "rl.reward", reward_model=True)


def test_hub_ids_offline_unreachable_and_unknown(monkeypatch):
    with pytest.raises(ConfigError, match="model.path=runs/a/b: no such folder"):
        check_model_source("runs/a/b", "model.path")  # three parts: not a hub id either
    monkeypatch.setattr(folders, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(folders.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="not in the hub cache \\(offline: HF_HUB_OFFLINE=1\\)"):
        check_model_source("org/name", "model.path")
    monkeypatch.setattr(folders.constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(folders, "file_exists", unreachable)
    with pytest.raises(ConfigError, match="the hub is unreachable \\(ConnectionError: \\[Errno"):
        check_model_source("org/name", "model.path")
    monkeypatch.setattr(folders, "file_exists", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="no model repo of that id on the hub"):
        check_model_source("org/name", "model.path")
    monkeypatch.setattr(folders, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")
    check_model_source("org/name", "model.path")  # cached: no request at all


def test_an_unreachable_hub_fails_at_once_without_retries(monkeypatch):
    from huggingface_hub import HfApi

    # port 9 (discard) refuses connections: a real request, answered by no server
    monkeypatch.setattr(folders, "file_exists", HfApi(endpoint="http://127.0.0.1:9").file_exists)
    monkeypatch.setattr(folders, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(folders.constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="model.path=org/name: .* the hub is unreachable"):
        check_model_source("org/name", "model.path")
    assert time.monotonic() - start < 5  # huggingface_hub's retries take ~23 s per file


def test_loading_what_the_checks_would_refuse_is_one_line(copy_of, tmp_path):
    folder = copy_of()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cfg = ModelConfig(path=str(folder))
    tokenizer = load_tokenizer(cfg)
    with pytest.raises(UserInputError, match=r"cannot load the model from .*copy: a safetensors"):
        load_model(cfg, tokenizer)
    with pytest.raises(UserInputError, match="cannot load the tokenizer from .*no-such") as err:
        load_tokenizer(ModelConfig(path=str(tmp_path / "no-such")))
    assert "\n" not in str(err.value)
