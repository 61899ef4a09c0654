"""The vlm_sft recipe on a tiny LLaVA and a tiny shapes export: what each LLaVA stage trains,
a loadable final folder that fits its data, resume after a kill, bad input as one line."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from vlm_runs import changed_parts, metric_rows, same_weights, tiny_vlm_world

from alignlab.cli import main
from alignlab.data.vlm import collate_vlm, read_vlm_rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tiny LLaVA folder, shapes export folder with captions.jsonl and sft.jsonl)."""
    root = tmp_path_factory.mktemp("vlm_sft")
    model, shapes = tiny_vlm_world(root, n_train=8)
    return model, shapes


def args(preset, model, data, out, *extra):
    return [
        "vlm_sft",
        "--config",
        preset,
        f"model.path={model}",
        f"data.path={data}",
        f"train.output_dir={out}",
        "train.max_steps=3",
        "train.micro_batch_size=4",
        "train.lr=1e-2",
        "train.warmup_ratio=0",
        "train.log_every=1",
        "train.progress=false",
        "train.tensorboard=false",
        *extra,
    ]


def losses(out):
    return [(r["step"], r["train/loss"]) for r in metric_rows(out)]


def test_stage1_trains_only_the_projector(world, tmp_path):
    model, shapes = world
    out = tmp_path / "stage1"
    assert main(args("vlm_sft_stage1", model, shapes / "captions.jsonl", out)) == 0
    assert changed_parts(model, out / "final") == {"tower": False, "projector": True, "llm": False}
    assert [s for s, _ in losses(out)] == [1, 2, 3]


def batch_loss(folder, rows):
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    batch = collate_vlm(rows, processor, max_length=512)
    with torch.no_grad():
        return model(**batch).loss.item()


def test_stage2_trains_projector_and_llm_and_fits_its_batch(world, tmp_path):
    # every step sees the same 8 rows (global batch = the data): the final folder, reloaded
    # with the Auto classes, must fit them better than the start did
    model, shapes = world
    out = tmp_path / "stage2"
    extra = ("train.max_steps=8", "train.micro_batch_size=8", "data.eval_fraction=0")
    assert main(args("vlm_sft_stage2", model, shapes / "sft.jsonl", out, *extra)) == 0
    assert changed_parts(model, out / "final") == {"tower": False, "projector": True, "llm": True}
    rows = read_vlm_rows(shapes / "sft.jsonl")
    start, final = batch_loss(model, rows), batch_loss(out / "final", rows)
    assert final < 0.9 * start, (start, final)
    trajectory = [loss for _, loss in losses(out)]
    assert trajectory[-1] < trajectory[0]


def test_killed_run_resumes_to_the_same_result(world, tmp_path, capsys):
    model, shapes = world
    data = shapes / "captions.jsonl"
    common = ("train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=5")
    ref = tmp_path / "ref"
    assert main(args("vlm_sft_stage1", model, data, ref, *common)) == 0
    out = tmp_path / "run"
    env = {**os.environ, "ALIGNLAB_CRASH": "step:3", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "alignlab.cli", *args("vlm_sft_stage1", model, data, out)]
    command += common
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    checkpoint = out / "checkpoints" / "step-00000002"
    AutoModelForImageTextToText.from_pretrained(checkpoint)  # a plain HF folder ...
    AutoProcessor.from_pretrained(checkpoint)  # ... with its processor
    capsys.readouterr()
    resumed = args("vlm_sft_stage1", model, data, out, *common, "train.resume=true")
    assert main(resumed) == 0
    assert "resuming from" in capsys.readouterr().out
    assert losses(out) == losses(ref)
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]
    assert same_weights(out / "final", ref / "final")


def test_bad_input_is_one_line(world, tmp_path, capsys):
    model, shapes = world
    missing = tmp_path / "missing.jsonl"
    assert main(args("vlm_sft_stage1", model, missing, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "data.path" in err and "missing.jsonl" in err
    assert "Traceback" not in err
    frozen = ("trainable.projector=false",)
    assert main(args("vlm_sft_stage1", model, shapes / "captions.jsonl", tmp_path / "o", *frozen))
    assert "trainable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written


def test_lora_on_the_llm_trains_adapters_and_projector_and_resumes(world, tmp_path, capsys):
    # LoRA adapters on the LLM, the projector fully trained (saved beside the adapter), the
    # tower frozen; the final folder is plain merged weights, and a killed run resumes to the
    # same result (the projector comes back from the adapter folder, not from model.path)
    model, shapes = world
    data = shapes / "sft.jsonl"
    lora = ("model.lora.enabled=true", "model.lora.r=4", "train.max_steps=4",
            "train.save_every=2", "train.keep_checkpoints=5")  # fmt: skip
    ref = tmp_path / "ref"
    assert main(args("vlm_sft_stage2", model, data, ref, *lora)) == 0
    out = capsys.readouterr().out
    assert "tower 0" in out and "projector 0" not in out
    assert changed_parts(model, ref / "final") == {"tower": False, "projector": True, "llm": True}
    assert (ref / "checkpoints" / "step-00000002" / "adapter").is_dir()
    run = tmp_path / "run"
    env = {**os.environ, "ALIGNLAB_CRASH": "step:3", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "alignlab.cli", *args("vlm_sft_stage2", model, data, run)]
    killed = subprocess.run([*command, *lora], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    resumed = args("vlm_sft_stage2", model, data, run, *lora, "train.resume=true")
    assert main(resumed) == 0
    assert losses(run) == losses(ref)
    assert same_weights(run / "final", ref / "final")
    wrong = ("model.lora.enabled=true", "trainable.tower=true")
    assert main(args("vlm_sft_stage2", model, data, tmp_path / "bad", *wrong)) == 2
    assert "trainable.tower" in capsys.readouterr().err


def test_bad_rows_stop_the_run_or_are_skipped_and_counted(world, tmp_path, capsys):
    model, shapes = world
    good = []
    for line in (shapes / "sft.jsonl").read_text().splitlines()[:3]:
        row = json.loads(line)
        row["images"] = [str(shapes / name) for name in row["images"]]
        good.append(json.dumps(row))
    missing = json.loads(good[0])
    missing["images"] = ["images/no_such.png"]
    unreadable = json.loads(good[1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    unreadable["images"] = [str(tmp_path / "broken.png")]
    lines = [*good, json.dumps(missing), "{not json", json.dumps(unreadable)]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert main(args("vlm_sft_stage2", model, data, tmp_path / "strict")) == 2
    err = capsys.readouterr().err
    assert "mixed.jsonl:5: malformed JSON" in err and "Traceback" not in err  # read first
    assert not (tmp_path / "strict").exists()
    skip = ("data.on_bad_example=skip", "train.max_steps=1")
    assert main(args("vlm_sft_stage2", model, data, tmp_path / "lenient", *skip)) == 0
    out = capsys.readouterr().out
    assert (
        "read 6 records: 3 used, 3 skipped (1 malformed JSON, 1 missing image, 1 bad image)" in out
    )
    assert "2 training rows, 1 eval rows" in out  # the preset holds out 5%, at least one row
    # nothing good left: one line naming the file and what was skipped
    (tmp_path / "bad.jsonl").write_text("\n".join(lines[3:]) + "\n")
    assert (
        main(args("vlm_sft_stage2", model, tmp_path / "bad.jsonl", tmp_path / "none", *skip)) == 2
    )
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "3 skipped" in err and "Traceback" not in err
