"""Named lab sizes (`alignlab lab build size=medium`): config only, nothing is pretrained."""

import pytest
import torch
from transformers import LlamaForCausalLM

from alignlab.cli import main
from alignlab.config import ConfigError, load_config
from alignlab.lab.build import DEFAULT_SIZE, DEMO_SIZE, LAB_SIZES, LabBuildConfig, model_config


def parameters(cfg: LabBuildConfig, vocab_size: int = 1000) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = LlamaForCausalLM(model_config(cfg, vocab_size))
    return sum(p.numel() for p in model.parameters())


def test_the_default_size_fills_what_the_build_used_before_sizes():
    cfg = LabBuildConfig()
    assert cfg.size == DEFAULT_SIZE == "small"
    shape = (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.pretrain_epochs, cfg.pretrain_lr)
    assert shape == (256, 4, 4, 8.0, 2e-3)


def test_medium_has_two_to_four_times_the_parameters_of_small():
    small, medium = parameters(LabBuildConfig()), parameters(LabBuildConfig(size="medium"))
    assert 2 <= medium / small <= 4


def test_an_explicit_field_wins_over_the_size():
    cfg = load_config(LabBuildConfig, None, ["size=medium", "hidden_size=192", "num_heads=3"])
    assert (cfg.hidden_size, cfg.num_heads) == (192, 3)
    assert cfg.num_layers == LAB_SIZES["medium"]["num_layers"]  # the rest from the size


def test_the_key_hashes_the_values_not_the_size_name():
    medium = LabBuildConfig(size="medium")
    spelled_out = LabBuildConfig(**{**LAB_SIZES["medium"]})  # small's name, medium's values
    assert spelled_out.size == "small" and spelled_out.key() == medium.key()
    assert medium.key() != LabBuildConfig().key()


def test_bad_sizes_and_shapes_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="size: 'huge' is not allowed"):
        load_config(LabBuildConfig, None, ["size=huge"])
    with pytest.raises(ConfigError, match="size: 'huge' is not one of small, demo, medium"):
        LabBuildConfig(size="huge")
    with pytest.raises(ConfigError, match="hidden_size: 100 is not a multiple of num_heads=6"):
        load_config(LabBuildConfig, None, ["size=medium", "hidden_size=100"])


def test_build_cli_refuses_an_unknown_size(capsys):
    assert main(["lab", "build", "size=huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "size" in err[0] and "medium" in err[0]


def test_each_size_has_its_own_default_folder():
    assert LabBuildConfig().out == "runs/lab"
    assert load_config(LabBuildConfig, None, ["size=medium"]).out == "runs/lab-medium"
    assert load_config(LabBuildConfig, None, ["size=demo", "out=elsewhere"]).out == "elsewhere"


def test_the_demo_size_is_the_benchmarks_model_pretrained_for_fewer_epochs():
    small, demo = LabBuildConfig(), LabBuildConfig(size=DEMO_SIZE)
    assert model_config(small, 1000).to_dict() == model_config(demo, 1000).to_dict()
    assert demo.pretrain_epochs < small.pretrain_epochs and demo.key() != small.key()


@pytest.mark.parametrize(
    "argv,size,out",
    [([], DEMO_SIZE, "runs/lab-demo"), (["size=small"], "small", "runs/lab")],
)
def test_the_demo_builds_its_own_size_unless_told_otherwise(monkeypatch, tmp_path, argv, size, out):
    seen = {}
    monkeypatch.setattr("alignlab.lab.demo.run_demo", lambda out, cfg, seed: seen.update(cfg=cfg))
    assert main(["lab", "demo", "--out", str(tmp_path / "demo"), *argv]) in (0, None)
    assert (seen["cfg"].size, seen["cfg"].out) == (size, out)
