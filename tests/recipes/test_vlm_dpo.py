"""VLM DPO on a tiny LLaVA and a tiny shapes export: the pairs read and collated with their
images, the reference matching the policy at the start, what trains, pairs learned, the
family's other losses, resume after a kill, bad input as one line."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from vlm_runs import changed_parts, metric_rows, same_weights, tiny_vlm_world

from alignlab.cli import main
from alignlab.data.pairs import split_pairs
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError
from alignlab.data.vlm_pairs import collate_vlm_pairs, encode_vlm_pairs, read_vlm_pairs
from alignlab.ops import IGNORE_INDEX


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tiny LLaVA folder, shapes export folder with preference.jsonl)."""
    root = tmp_path_factory.mktemp("vlm_dpo")
    model, shapes = tiny_vlm_world(root, n_train=8)
    return model, shapes


def args(model, data, out, *extra):
    return [
        "vlm_dpo", "--config", "vlm_dpo_lab", f"model.path={model}", f"data.path={data}",
        f"train.output_dir={out}", "train.max_steps=3", "train.micro_batch_size=4",
        "train.lr=1e-2", "train.warmup_ratio=0", "train.log_every=1", "train.progress=false",
        "train.tensorboard=false", "data.eval_fraction=0", *extra,
    ]  # fmt: skip


def test_pairs_collate_chosen_first_with_their_images(world):
    model, shapes = world
    processor = AutoProcessor.from_pretrained(model)
    pairs = read_vlm_pairs(shapes / "preference.jsonl")
    rows = encode_vlm_pairs(pairs[:3], processor, max_length=512)
    batch = collate_vlm_pairs(rows, processor, max_length=512)
    assert batch["input_ids"].shape[0] == 6
    assert batch["pixel_values"].shape[0] == 6  # each side brings its image
    chosen, rejected = split_pairs(batch["pixel_values"])
    torch.testing.assert_close(chosen, rejected, rtol=0, atol=0)  # the same image per pair
    tokenizer = processor.tokenizer
    for k, (row, pair) in enumerate(zip(rows, pairs[:3])):
        for side, index in (("chosen", k), ("rejected", k + 3)):
            labels = batch["labels"][index]
            trained = tokenizer.decode(labels[labels != IGNORE_INDEX])
            answer = getattr(pair, side).messages[-1]["content"][0]["text"]
            assert trained.startswith(answer), (trained, answer)  # the response, then its end
            kept = batch["attention_mask"][index].bool()
            assert batch["input_ids"][index][kept].tolist() == row[f"{side}_input_ids"]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_pair_rows_name_file_line_and_field(world, tmp_path):
    _, shapes = world
    good = json.loads((shapes / "preference.jsonl").read_text().splitlines()[0])
    good["images"] = [str(shapes / good["images"][0])]
    cases = [
        ({k: v for k, v in good.items() if k != "prompt"}, "prompt"),
        ({**good, "chosen": [{"role": "user", "content": "hi"}]}, "chosen"),
        ({**good, "images": []}, "images"),
        ({**good, "rejected": [{"role": "assistant", "content": 3}]}, "rejected[0].content"),
    ]
    for bad, field in cases:
        path = write_rows(tmp_path / "bad.jsonl", [good, bad])
        with pytest.raises(DataError) as err:
            read_vlm_pairs(path)
        assert "bad.jsonl:2" in str(err.value) and field in str(err.value), str(err.value)
    # with on_bad_example=skip the good rows stay and every bad one is counted by reason
    report = DataReport()
    path = write_rows(tmp_path / "mixed.jsonl", [good, *(bad for bad, _ in cases), good])
    kept = read_vlm_pairs(path, on_bad_example="skip", report=report)
    assert len(kept) == 2 and [p.chosen.record.line for p in kept] == [1, 6]
    assert report.records == 6 and report.total_skipped == 4
    plain = {**good, "chosen": "A red circle.", "rejected": "A blue star."}
    pair = read_vlm_pairs(write_rows(tmp_path / "plain.jsonl", [plain]))[0]
    assert pair.chosen.messages[-1] == {"role": "assistant", "content": "A red circle."}


def test_dpo_trains_projector_and_llm_and_learns_its_pairs(world, tmp_path):
    # the global batch is the data: every step sees the same 8 pairs
    model, shapes = world
    out = tmp_path / "dpo"
    extra = ("train.max_steps=12", "train.micro_batch_size=8", "data.max_examples=8")
    extra += ("train.schedule=constant",)
    assert main(args(model, shapes / "preference.jsonl", out, *extra)) == 0
    rows = metric_rows(out)
    # the precomputed reference is the start model run on the same images: step 1's policy
    # log-probs equal it (the loss is log 2), up to float summation order
    first = rows[0]
    scale = abs(first["train/logps/chosen"]) + abs(first["train/logps/rejected"])
    tolerance = 64 * torch.finfo(torch.float32).eps * max(scale, 1.0)
    assert abs(first["train/logratio/chosen"]) <= tolerance
    assert abs(first["train/logratio/rejected"]) <= tolerance
    assert math.isclose(first["train/loss"], math.log(2), abs_tol=1e-5)
    assert rows[-1]["train/loss"] < 0.5 * math.log(2), [r["train/loss"] for r in rows]
    assert rows[-1]["train/rewards/accuracy"] == 1.0
    assert changed_parts(model, out / "final") == {"tower": False, "projector": True, "llm": True}
    AutoProcessor.from_pretrained(out / "final")
    assert (out / "reference_logps.pt").exists()


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo"])
def test_family_losses_run_through_the_same_loop(world, tmp_path, loss):
    model, shapes = world
    out = tmp_path / loss
    extra = (f"loss={loss}", "train.max_steps=2", "data.max_examples=8", "reference.mode=model")
    assert main(args(model, shapes / "preference.jsonl", out, *extra)) == 0
    rows = metric_rows(out)
    assert len(rows) == 2 and all(math.isfinite(r["train/loss"]) for r in rows)
    assert ("train/logratio/chosen" in rows[0]) == (loss == "ipo")  # reference-free or not


def test_killed_run_resumes_to_the_same_result(world, tmp_path, capsys):
    model, shapes = world
    data = shapes / "preference.jsonl"
    common = ("train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=5")
    ref = tmp_path / "ref"
    assert main(args(model, data, ref, *common)) == 0
    out = tmp_path / "run"
    env = {**os.environ, "ALIGNLAB_CRASH": "step:3", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "alignlab.cli", *args(model, data, out, *common)]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    checkpoint = out / "checkpoints" / "step-00000002"
    AutoModelForImageTextToText.from_pretrained(checkpoint)
    AutoProcessor.from_pretrained(checkpoint)
    capsys.readouterr()
    assert main(args(model, data, out, *common, "train.resume=true")) == 0
    out_text = capsys.readouterr().out
    assert "resuming from" in out_text and "reusing" in out_text  # the cached reference
    loss = [(r["step"], r["train/loss"]) for r in metric_rows(out)]
    assert loss == [(r["step"], r["train/loss"]) for r in metric_rows(ref)]
    assert same_weights(out / "final", ref / "final")


def test_bad_input_is_one_line(world, tmp_path, capsys):
    model, shapes = world
    assert main(args(model, tmp_path / "missing.jsonl", tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "data.path" in err and "Traceback" not in err
    sft_rows = shapes / "sft.jsonl"  # SFT rows, not pairs: the error names the field and line
    assert main(args(model, sft_rows, tmp_path / "o")) != 0
    err = capsys.readouterr().err
    assert "sft.jsonl:1" in err and "prompt" in err and "Traceback" not in err
    one = ("data.max_examples=1", "data.eval_fraction=0.5")  # nothing left to train on
    assert main(args(model, shapes / "preference.jsonl", tmp_path / "o", *one)) == 2
    assert "data.eval_fraction=0.5 of 1 rows" in capsys.readouterr().err
    off = ("data.completion_only_loss=false",)
    assert main(args(model, shapes / "preference.jsonl", tmp_path / "o", *off)) == 2
    assert "completion_only_loss" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_lora_policy_is_its_own_reference(world, tmp_path):
    # reference.mode=adapter: the LoRA policy with its adapters (and its trained projector
    # copy) disabled is the start model, so step 1's log-ratios are 0 up to float order
    model, shapes = world
    out = tmp_path / "lora"
    extra = ("model.lora.enabled=true", "model.lora.r=4", "reference.mode=adapter",
             "data.max_examples=8", "train.micro_batch_size=8")  # fmt: skip
    assert main(args(model, shapes / "preference.jsonl", out, *extra)) == 0
    first = metric_rows(out)[0]
    scale = abs(first["train/logps/chosen"]) + abs(first["train/logps/rejected"])
    tolerance = 64 * torch.finfo(torch.float32).eps * max(scale, 1.0)
    assert abs(first["train/logratio/chosen"]) <= tolerance
    assert abs(first["train/logratio/rejected"]) <= tolerance
    assert changed_parts(model, out / "final") == {"tower": False, "projector": True, "llm": True}
