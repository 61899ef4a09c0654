"""A user's run folders are never overwritten, mixed up or left half-written: per-recipe default
folders, refusals that name what differs, resume checks, clean-up after a kill, permissions."""

import contextlib
import json
import os
import shutil
import stat

import pytest
import torch

from alignlab.cli import RECIPES, main
from alignlab.fileio import atomic_folder, atomic_write_text, write_jsonl
from alignlab.training.metrics import MetricsLogger, read_metrics
from alignlab.training.run_folder import clear_leftovers


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sft(model, data, out, *extra):
    return main(
        [
            "sft", f"model.path={model}", f"data.path={data}", f"train.output_dir={out}",
            "train.max_steps=2", "train.micro_batch_size=4", "train.progress=false",
            "train.tensorboard=false", *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"prompt": f"What is {i} plus 1?", "chosen": f" {i + 1}.", "rejected": " no"} for i in range(8)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def snapshot(folder):
    """Every file under `folder` with its bytes: what 'left as it was' compares."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def test_every_recipe_defaults_to_its_own_folder(capsys):
    import importlib

    for name, (module_name, config_name) in RECIPES.items():
        config = getattr(importlib.import_module(module_name), config_name)()
        if hasattr(config, "train"):
            assert config.train.output_dir == f"runs/{name}", name
        elif hasattr(config, "output_dir"):  # a pipeline: one folder, a subfolder per stage
            assert config.output_dir == f"runs/{name}", name
    with pytest.raises(SystemExit):
        main(["dpo", "--help"])
    assert "train.output_dir = 'runs/dpo'" in capsys.readouterr().out


def test_dpo_into_the_sft_folder_is_refused_and_the_sft_run_is_kept(
    tiny_model_dir, sft_file, pairs_file, tmp_path, capsys
):
    out = tmp_path / "runs" / "sft"
    assert sft(tiny_model_dir, sft_file, out, "train.save_every=1") == 0
    before = snapshot(out)
    dpo = ["dpo", f"model.path={out / 'final'}", f"data.path={pairs_file}"]
    # the output folder holds the input model: refused even with overwrite
    for extra in ([], ["train.overwrite=true"], ["train.resume=true"]):
        capsys.readouterr()
        assert main([*dpo, f"train.output_dir={out}", *extra]) == 2
        err = capsys.readouterr().err
        assert "model.path=" in err and "train.output_dir" in err, err
    # another input, same folder: the folder holds an sft run
    other = tmp_path / "other_model"
    other.symlink_to(tiny_model_dir, target_is_directory=True)
    assert main(["dpo", f"model.path={other}", f"data.path={pairs_file}", f"train.output_dir={out}"]) == 2  # fmt: skip
    assert "holds a sft run" in capsys.readouterr().err
    assert main([*dpo, f"train.output_dir={out}", "train.resume=true"]) == 2  # no KeyError
    assert snapshot(out) == before


def test_resume_refuses_another_config_and_names_the_keys(tiny_model_dir, sft_file, tmp_path, capsys):  # fmt: skip
    out = tmp_path / "run"
    assert sft(tiny_model_dir, sft_file, out, "train.save_every=1", "train.max_steps=3") == 0
    before = snapshot(out)
    capsys.readouterr()
    code = sft(tiny_model_dir, sft_file, out, "train.resume=true", "train.seed=7", "train.lr=1e-3", "train.max_steps=3")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "train.seed" in err and "splice" in err, err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(out) == before
    # a fresh run of another config into the folder: refused, names the keys
    assert sft(tiny_model_dir, sft_file, out, "train.lr=1e-3") == 2
    assert "train.lr: 2e-05 -> 0.001" in capsys.readouterr().err
    # the same config again without resume: it has checkpoints, so resume or overwrite
    assert sft(tiny_model_dir, sft_file, out, "train.save_every=1", "train.max_steps=3") == 2
    assert "finished" in capsys.readouterr().err  # final/ is there: only overwrite redoes it
    final = out / "final"
    final.rename(out.parent / "kept_final")  # as if it had been killed before the end
    assert sft(tiny_model_dir, sft_file, out, "train.save_every=1", "train.max_steps=3") == 2
    assert "continue it with train.resume=true" in capsys.readouterr().err
    (out.parent / "kept_final").rename(final)
    assert snapshot(out) == before  # refusals wrote nothing
    # safe changes pass: a longer schedule (said) and another split of the same batch
    extra = ("train.max_steps=4", "train.micro_batch_size=2", "train.grad_accum=2")
    assert sft(tiny_model_dir, sft_file, out, "train.resume=true", *extra) == 0
    assert "learning-rate schedule is recomputed" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r] == [1, 2, 3, 4]
    # another batch per step: refused
    assert sft(tiny_model_dir, sft_file, out, "train.resume=true", "train.max_steps=5", "train.micro_batch_size=8") == 2  # fmt: skip
    assert "micro_batch_size x train.grad_accum" in capsys.readouterr().err


def test_overwrite_replaces_another_run_and_never_deletes_foreign_files(
    tiny_model_dir, sft_file, tmp_path, capsys
):
    out = tmp_path / "run"
    assert sft(tiny_model_dir, sft_file, out, "train.save_every=1") == 0
    assert sft(tiny_model_dir, sft_file, out, "train.lr=1e-3", "train.overwrite=true") == 0
    assert not (out / "checkpoints").exists()  # the old run's checkpoints went with it
    assert json.loads((out / "run.json").read_text())["config"]["train"]["lr"] == 1e-3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert sft(tiny_model_dir, sft_file, foreign) == 2
    assert "holds no alignlab run (notes.txt)" in capsys.readouterr().err
    assert sft(tiny_model_dir, sft_file, foreign, "train.overwrite=true") == 0
    assert (foreign / "notes.txt").read_text() == "keep me" and (foreign / "final").is_dir()
    assert sft(tiny_model_dir, sft_file, out, "train.overwrite=true", "train.resume=true") == 2


def test_a_final_dir_outside_the_run_keeps_the_model_already_there(
    tiny_model_dir, sft_file, tmp_path, capsys
):
    """As a run copied from another's config.yaml, whose final_dir still names the first
    run's model folder (the lab build's pretraining writes runs/lab/base that way)."""
    first = tmp_path / "base"
    assert sft(tiny_model_dir, sft_file, tmp_path / "one", f"final_dir={first}") == 0
    before = snapshot(first)
    assert sft(tiny_model_dir, sft_file, tmp_path / "two", f"final_dir={first}") == 2
    assert f"final_dir={first} already holds files" in capsys.readouterr().err
    assert snapshot(first) == before and not (tmp_path / "two").exists()
    assert sft(tiny_model_dir, sft_file, tmp_path / "two", f"final_dir={first}", "train.lr=1e-3",
               "train.overwrite=true") == 0  # fmt: skip
    assert snapshot(first) != before


def test_an_earlier_run_that_saved_no_model_is_replaced_without_asking(
    tiny_model_dir, sft_file, tmp_path, capsys
):
    out = tmp_path / "run"
    assert sft(tiny_model_dir, sft_file, out) == 0
    shutil.rmtree(out / "final")  # as a run that failed in its first step leaves the folder
    assert sft(tiny_model_dir, sft_file, out, "train.lr=1e-3") == 0
    assert "removed the earlier run" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["config"]["train"]["lr"] == 1e-3


def test_a_run_that_fails_before_training_leaves_the_folder_as_it_found_it(
    tiny_model_dir, sft_file, tmp_path
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": ""}\n')
    new = tmp_path / "new"
    assert sft(tiny_model_dir, bad, new) == 2
    assert not new.exists()
    out = tmp_path / "run"
    assert sft(tiny_model_dir, sft_file, out, "train.save_every=1") == 0
    before = snapshot(out)
    assert sft(tiny_model_dir, bad, out, "train.overwrite=true") == 2  # fails on the data
    assert snapshot(out) == before
    with contextlib.suppress(Exception):  # a missing model: exit code 2 or an exception
        assert sft(tiny_model_dir, sft_file, out, "train.resume=true", "model.path=/nowhere") == 2
    assert snapshot(out) == before


def test_leftovers_of_a_killed_save_are_cleared_on_the_next_start(tiny_model_dir, sft_file, tmp_path):  # fmt: skip
    out = tmp_path / "run"
    assert sft(tiny_model_dir, sft_file, out, "train.save_every=1", "train.max_steps=3") == 0
    checkpoints = out / "checkpoints"
    (checkpoints / ".step-00000004.tmp-x1").mkdir()
    (checkpoints / ".step-00000004.tmp-x1" / "model.safetensors").write_bytes(b"half")
    (out / ".final.tmp-x2").mkdir()
    (out / ".metrics.jsonl.tmp-x3").write_text("{")
    assert sft(tiny_model_dir, sft_file, out, "train.resume=true", "train.save_every=1", "train.max_steps=4") == 0  # fmt: skip
    hidden = [p.name for p in [*out.iterdir(), *checkpoints.iterdir()] if p.name.startswith(".")]
    assert hidden == []


def test_clear_leftovers_restores_an_old_copy_whose_replacement_never_landed(tmp_path):
    (tmp_path / ".final.old-12").mkdir()  # killed between the two renames of a replacement
    (tmp_path / ".final.old-12" / "config.json").write_text("{}")
    (tmp_path / ".final.tmp-ab").mkdir()
    (tmp_path / ".other.tmp-cd").mkdir()
    clear_leftovers(tmp_path, only="final")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-cd", "final"]
    assert (tmp_path / "final" / "config.json").exists()


def test_a_checkpoint_of_two_processes_is_not_resumed_by_one(tiny_model_dir, sft_file, tmp_path, capsys):  # fmt: skip
    out = tmp_path / "run"
    assert sft(tiny_model_dir, sft_file, out, "train.save_every=1", "train.max_steps=3") == 0
    state_file = out / "checkpoints" / "step-00000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["world_size"] == 1 and state["run"]["recipe"] == "sft"
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    capsys.readouterr()
    assert sft(tiny_model_dir, sft_file, out, "train.resume=true", "train.max_steps=3") == 2
    assert "saved by 2 process(es)" in capsys.readouterr().err


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    logger = MetricsLogger(tmp_path, tensorboard=False, resume_step=2)
    logger.log(3, {"loss": 0.8})
    logger.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    from alignlab.config import ConfigError

    with pytest.raises(ConfigError, match="metrics.jsonl:2"):
        read_metrics(path)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
        atomic_write_text(tmp_path / "file.txt", "x")
        write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    assert mode(tmp_path / "folder") == 0o777 & ~umask
    assert mode(tmp_path / "folder" / "inside.txt") == 0o666 & ~umask
    assert mode(tmp_path / "file.txt") == mode(tmp_path / "rows.jsonl") == 0o666 & ~umask


def test_saved_models_are_readable_like_save_pretrained_output(tiny_model_dir, sft_file, tmp_path):
    old = os.umask(0o022)
    try:
        assert sft(tiny_model_dir, sft_file, tmp_path / "run", "train.save_every=1") == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for folder in (run, run / "final", run / "checkpoints", run / "checkpoints" / "step-00000001"):
        assert mode(folder) == 0o755, folder
    for name in ("final/model.safetensors", "final/config.json", "config.yaml", "run.json", "metrics.jsonl"):  # fmt: skip
        assert mode(run / name) == 0o644, name
