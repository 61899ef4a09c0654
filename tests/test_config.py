import dataclasses

import pytest
import torch

from alignlab.config import (
    ArgumentParser,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    describe,
    load_config,
    option,
    section,
)


@dataclasses.dataclass
class Demo:
    model: ModelConfig = section(ModelConfig, "model")
    data: DataConfig = section(DataConfig, "data")
    train: TrainConfig = section(TrainConfig, "train")
    note: str = option("", "free text")


REQUIRED = ["model.path=m", "data.path=d.jsonl"]


def test_preset_and_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  lr: 1.0e-4\n  micro_batch_size: 4\nmodel:\n  path: x\n")
    cfg = load_config(Demo, preset, ["data.path=d.jsonl", "train.lr=3e-4", "model.lora.r=8"])
    assert cfg.train.lr == 3e-4
    assert cfg.train.micro_batch_size == 4
    assert cfg.model.path == "x"
    assert cfg.model.lora.r == 8
    assert cfg.train.epochs == 1.0  # default kept


def test_list_override_from_comma_string():
    cfg = load_config(Demo, None, [*REQUIRED, "model.lora.target_modules=q_proj,v_proj"])
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'; did you mean train.lr\?"):
        load_config(Demo, None, [*REQUIRED, "train.lrr=1e-4"])
    with pytest.raises(ConfigError, match="did you mean train"):
        load_config(Demo, None, [*REQUIRED, "trian.lr=1e-4"])


def test_wrong_type_names_field_value_and_type():
    with pytest.raises(ConfigError, match=r"train.micro_batch_size: expected int, got 'big'"):
        load_config(Demo, None, [*REQUIRED, "train.micro_batch_size=big"])
    with pytest.raises(ConfigError, match=r"train.micro_batch_size: expected int, got 2.5"):
        load_config(Demo, None, [*REQUIRED, "train.micro_batch_size=2.5"])


def test_out_of_range_and_choices():
    with pytest.raises(ConfigError, match=r"train.lr: -1.0 is out of range; it must be > 0"):
        load_config(Demo, None, [*REQUIRED, "train.lr=-1.0"])
    with pytest.raises(
        ConfigError, match=r"train.micro_batch_size: 0 is out of range; it must be >= 1"
    ):
        load_config(Demo, None, [*REQUIRED, "train.micro_batch_size=0"])
    with pytest.raises(
        ConfigError, match=r"model.dtype: 'fp8' is not allowed; choose one of 'fp32'"
    ):
        load_config(Demo, None, [*REQUIRED, "model.dtype=fp8"])
    with pytest.raises(
        ConfigError, match=r"model.checkpoint_fraction: 0.0 is out of range; it must be > 0"
    ):
        load_config(Demo, None, [*REQUIRED, "model.checkpoint_fraction=0"])


def test_checkpoint_fraction_needs_checkpointing():
    with pytest.raises(ConfigError, match="needs model.gradient_checkpointing=true"):
        load_config(Demo, None, [*REQUIRED, "model.checkpoint_fraction=0.5"])
    on = ["model.gradient_checkpointing=true", "model.checkpoint_fraction=0.5"]
    assert load_config(Demo, None, [*REQUIRED, *on]).model.checkpoint_fraction == 0.5


def test_conflicts_refused_before_work():
    with pytest.raises(ConfigError, match="packing=true needs data.max_length > 0"):
        load_config(Demo, None, [*REQUIRED, "data.packing=true", "data.max_length=0"])
    with pytest.raises(ConfigError, match="data.eval_path or data.eval_fraction"):
        load_config(Demo, None, [*REQUIRED, "data.eval_path=e.jsonl", "data.eval_fraction=0.1"])
    with pytest.raises(ConfigError, match="load_in_4bit=true needs model.lora.enabled"):
        load_config(Demo, None, [*REQUIRED, "model.lora.load_in_4bit=true"])
    with pytest.raises(ConfigError, match="model.path is required"):
        load_config(Demo, None, ["data.path=d.jsonl"])


def test_bad_yaml_names_file(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Demo, preset, REQUIRED)
    preset.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Demo, preset, REQUIRED)


def test_every_field_has_a_doc():
    lines = describe(Demo)
    assert any("train.lr = 2e-05  peak learning rate" in line for line in lines)

    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
            if dataclasses.is_dataclass(f.type) and not isinstance(f.type, str):
                walk(f.type)

    for cls in (ModelConfig, DataConfig, TrainConfig):
        walk(cls)


def test_yaml_no_and_off_stay_strings(tmp_path):
    cfg = load_config(Demo, None, [*REQUIRED, "train.mixed_precision=no", "train.progress=false"])
    assert cfg.train.mixed_precision == "no" and cfg.train.progress is False
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  mixed_precision: no\n  resume: true\n")
    cfg = load_config(Demo, preset, REQUIRED)
    assert cfg.train.mixed_precision == "no" and cfg.train.resume is True


def test_typo_hints_name_the_full_dotted_key():
    with pytest.raises(
        ConfigError, match=r"unknown key 'model.lora.rr'; did you mean model.lora.r\?"
    ):
        load_config(Demo, None, [*REQUIRED, "model.lora.rr=8"])
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.zzz'; valid keys of train: output_dir"
    ):
        load_config(Demo, None, [*REQUIRED, "train.zzz=1"])


def test_null_reads_null():
    with pytest.raises(ConfigError, match=r"^train.lr: expected float, got null$"):
        load_config(Demo, None, [*REQUIRED, "train.lr=null"])
    with pytest.raises(ConfigError, match=r"^model.dtype: expected str, got null$"):
        load_config(Demo, None, [*REQUIRED, "model.dtype=~"])
    with pytest.raises(ConfigError, match=r"expected a list of str, got null"):
        load_config(Demo, None, [*REQUIRED, "model.lora.target_modules=null"])


def test_yaml_errors_are_one_line_with_the_line_number(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train:\n  lr: 1\n  micro_batch_size: [4\n")
    with pytest.raises(ConfigError) as err:
        load_config(Demo, preset, REQUIRED)
    assert "\n" not in str(err.value) and "bad.yaml: not valid YAML" in str(err.value)
    assert "(line 4, column 1)" in str(err.value)
    with pytest.raises(ConfigError, match=r"override 'train.lr=\[1,': the value is not valid YAML"):
        load_config(Demo, None, [*REQUIRED, "train.lr=[1,"])
    preset.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="bad.yaml: not a YAML text file"):
        load_config(Demo, preset, REQUIRED)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine can run QLoRA's 4-bit base")
def test_qlora_without_cuda_refused_at_config_check():
    lora = ["model.lora.enabled=true", "model.lora.load_in_4bit=true"]
    with pytest.raises(ConfigError, match=r"load_in_4bit=true \(QLoRA\) needs a CUDA device"):
        load_config(Demo, None, [*REQUIRED, *lora])


def test_argument_parser_usage_errors_are_config_errors():
    parser = ArgumentParser(prog="alignlab eval")
    parser.add_argument("--model", required=True)
    with pytest.raises(
        ConfigError,
        match=r"^alignlab eval: the following arguments are required: "
        r"--model \(see alignlab eval --help\)$",
    ):
        parser.parse_args([])
