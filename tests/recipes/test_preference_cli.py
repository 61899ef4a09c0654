"""Every preference method and the reward model from the command line, with its shipped lab
preset, on a tiny model: `alignlab <recipe> --config <preset> ...` trains and saves a folder
that transformers loads; bad data stops it with the file:line of the record."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from word_model import _one_thread  # noqa: F401 - an autouse fixture

from alignlab.cli import main

METHODS = {
    "dpo": ("dpo", "dpo_lab", []),
    "cdpo": ("dpo", "dpo_lab", ["label_smoothing=0.1"]),
    "ipo": ("dpo", "dpo_lab", ["loss=ipo"]),
    "slic": ("dpo", "dpo_lab", ["loss=slic", "slic_delta=10"]),
    "orpo": ("dpo", "dpo_lab", ["loss=orpo"]),
    "simpo": ("dpo", "dpo_lab", ["loss=simpo", "beta=2.0", "simpo_gamma=0.5"]),
    "kto": ("kto", "kto_lab", []),
    "rrhf": ("rrhf", "rrhf_lab", []),
    "coh": ("coh", "coh_lab", []),
    "rm": ("rm", "rm_lab", []),
}


def cli_args(recipe, preset, model_dir, data, out, *extra):
    return [
        recipe, "--config", preset, f"model.path={model_dir}", f"data.path={data}",
        f"train.output_dir={out}", "train.max_steps=2", "train.micro_batch_size=4",
        "train.progress=false", "train.tensorboard=false", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_from_the_cli_with_its_lab_preset(
    method, tiny_model_dir, three_way_pairs, tmp_path
):
    recipe, preset, extra = METHODS[method]
    out = tmp_path / method
    assert main(cli_args(recipe, preset, tiny_model_dir, three_way_pairs, out, *extra)) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    loader = AutoModelForSequenceClassification if recipe == "rm" else AutoModelForCausalLM
    loader.from_pretrained(out / "final")


def test_bad_preference_record_is_named_by_file_and_line(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"}) + "\n"
        + json.dumps({"prompt": "a", "chosen": " b"}) + "\n"
    )  # fmt: skip
    for recipe, preset, _ in (METHODS["dpo"], METHODS["kto"]):
        code = main(cli_args(recipe, preset, tiny_model_dir, bad, tmp_path / recipe))
        assert code == 2
        err = capsys.readouterr().err
        assert "bad.jsonl:2" in err and "rejected" in err
        assert not (tmp_path / recipe / "final").exists()
