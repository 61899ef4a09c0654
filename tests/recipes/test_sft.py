"""The SFT recipe end to end on a tiny model: CLI smoke, invariants, resume, atomic saves."""

import json
import os
import subprocess
import sys

import pytest
import torch
from recipe_runs import SGD
from transformers import AutoModelForCausalLM
from weights import assert_close_series, assert_identical_weights, assert_same_updates

from alignlab.cli import main
from alignlab.config import load_config
from alignlab.recipes import sft


def overrides(model_dir, data_file, out, *extra):
    return [
        f"model.path={model_dir}",
        f"data.path={data_file}",
        f"train.output_dir={out}",
        "train.lr=1e-3",
        "train.warmup_steps=2",
        "train.progress=false",
        "train.tensorboard=false",
        *extra,
    ]


def losses(out, key="train/loss"):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


def test_cli_smoke_trains_and_writes_loadable_checkpoint(tiny_model_dir, sft_file, tmp_path):
    out = tmp_path / "run"
    args = overrides(tiny_model_dir, sft_file, out, "train.epochs=3", "train.micro_batch_size=8")
    args += ["train.tensorboard=true", "data.eval_fraction=0.25", "train.eval_every=5"]
    args += ["train.log_every=1", "train.lr=1e-2", "train.min_lr_ratio=0.5"]
    assert main(["sft", "--config", "sft_demo", *args]) == 0
    trajectory = [loss for _, loss in losses(out)]
    assert len(trajectory) == 14  # ceil(3 epochs * 36 examples / 8)
    assert trajectory[-1] < 0.6 * trajectory[0]
    assert losses(out, "eval/loss")
    assert any((out / "tensorboard").iterdir())
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.vocab_size > 0
    assert (out / "config.yaml").exists()


def test_cli_reports_bad_config_and_bad_data(tiny_model_dir, tmp_path, capsys):
    assert main(["sft", f"model.path={tiny_model_dir}", "data.path=x.jsonl", "train.lrr=1"]) == 2
    assert "did you mean train.lr?" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "yo"}\n{"prompt": "hi", "completion": ""}\n')
    code = main(["sft", *overrides(tiny_model_dir, bad, tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "completion" in err


def run_sft(model_dir, data_file, out, *extra):
    cfg = load_config(sft.SFTConfig, None, overrides(model_dir, data_file, out, *extra))
    return sft.run(cfg)


def test_grad_accumulation_4x2_equals_batch_8(tiny_model_dir, sft_file, tmp_path):
    # only the float summation order differs: compared under plain SGD (tests/weights.py)
    common = ("train.max_steps=4", *SGD)
    big = run_sft(tiny_model_dir, sft_file, tmp_path / "b8", *common, "train.micro_batch_size=8")
    acc = run_sft(
        tiny_model_dir, sft_file, tmp_path / "a4x2", *common,
        "train.micro_batch_size=2", "train.grad_accum=4",
    )  # fmt: skip
    a, b = losses(tmp_path / "b8"), losses(tmp_path / "a4x2")
    assert_close_series([x for _, x in a], [y for _, y in b], what="train/loss")
    assert_same_updates(big, acc, start=tiny_model_dir)


def launch(model_dir, data_file, out, *extra, crash=None):
    env = {**os.environ, "ALIGNLAB_CRASH": crash or "", "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "alignlab.cli",
        "sft",
        *overrides(model_dir, data_file, out, *extra),
    ]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


RESUMABLE = (
    "train.max_steps=8",
    "train.save_every=3",
    "train.micro_batch_size=4",
    "train.keep_checkpoints=5",
)


@pytest.mark.parametrize("crash", ["step:5", "save:6"])
def test_killed_run_resumes_to_the_same_result(tiny_model_dir, sft_file, tmp_path, crash):
    reference = launch(tiny_model_dir, sft_file, tmp_path / "ref", *RESUMABLE)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    killed = launch(tiny_model_dir, sft_file, out, *RESUMABLE, crash=crash)
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    checkpoints = sorted(
        p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")
    )
    assert checkpoints == ["step-00000003"]  # the save at step 6 never became visible
    if crash.startswith("save"):
        hidden = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
        assert hidden, "the half-written checkpoint should be a hidden temp folder"
    # the surviving checkpoint is a loadable HF folder
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-00000003")
    resumed = launch(tiny_model_dir, sft_file, out, *RESUMABLE, "train.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    got, want = losses(out), losses(tmp_path / "ref")
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 9))
    assert got == want  # the same computation in the same order: bit for bit
    assert_identical_weights(out / "final", tmp_path / "ref" / "final")


def test_lora_run_saves_merged_model_and_adapter(tiny_model_dir, sft_file, tmp_path):
    out = tmp_path / "lora"
    final = run_sft(
        tiny_model_dir, sft_file, out, "train.max_steps=3", "model.lora.enabled=true",
        "model.lora.r=4", "model.lora.save_adapter=true", "train.lr=1e-2",
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [
        name
        for (name, p), (_, q) in zip(model.named_parameters(), base.named_parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert changed and all("proj" in name for name in changed)
    assert (final / "adapter" / "adapter_model.safetensors").exists()


def test_recipes_lists_presets_and_cp_copies_one(tmp_path, capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "sft" in listing and "preset: sft_lora" in listing
    assert main(["cp", "sft_lora", str(tmp_path)]) == 0
    copied = tmp_path / "sft_lora.yaml"
    assert "lora:" in copied.read_text()
    assert main(["cp", "sft_lora", str(tmp_path)]) == 2  # never overwrites
    assert main(["cp", "no_such_preset", str(tmp_path / "x.yaml")]) == 2


def test_low_memory_settings_match_adamw_after_backward_and_resume(
    tiny_model_dir, sft_file, tmp_path
):
    # AdamW's updates run in backward (train.step_in_backward), with half the layers
    # recomputed (their forward runs again, the same kernels on the same inputs): the same
    # computation as the plain step, so bit for bit; one optimizer-state format: a plain run
    # killed after its step-3 checkpoint resumes with the low-memory settings
    args = ("train.max_grad_norm=0", "train.max_steps=6", "train.micro_batch_size=4",
            "train.save_every=3")  # fmt: skip
    plain, fused = tmp_path / "plain", tmp_path / "fused"
    assert launch(tiny_model_dir, sft_file, plain, *args).returncode == 0
    assert launch(tiny_model_dir, sft_file, fused, *args, crash="step:4").returncode == -9
    resumed = launch(
        tiny_model_dir, sft_file, fused, *args, "train.step_in_backward=true", "train.resume=true",
        "model.gradient_checkpointing=true", "model.checkpoint_fraction=0.5",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert losses(fused) == losses(plain)
    norms, plain_norms = losses(fused, "train/grad_norm"), losses(plain, "train/grad_norm")
    assert [s for s, _ in norms] == [s for s, _ in plain_norms] == list(range(1, 7))
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(plain_norms))
    assert_identical_weights(fused / "final", plain / "final")
