"""KTO and RRHF as long runs are used: a killed run resumes to the same result, and two
processes under torchrun (FSDP2 on gloo) match one process with the same global batch."""

import pytest
from recipe_runs import SGD, launch, launch_two, records, series
from weights import assert_close_series, assert_identical_weights, assert_same_updates

RECIPES = {"kto": "KTOConfig", "rrhf": "RRHFConfig"}


def overrides(model_dir, data_file, out, *extra):
    return [
        f"model.path={model_dir}", f"data.path={data_file}", f"train.output_dir={out}",
        "train.lr=1e-3", "train.progress=false", "train.tensorboard=false", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_killed_run_resumes_to_the_same_result(recipe, tiny_model_dir, three_way_pairs, tmp_path):
    # 12 pairs: KTO splits them into 24 examples, RRHF reads 12 two-response lists
    batch = "train.micro_batch_size=4" if recipe == "kto" else "train.micro_batch_size=2"
    resumable = ("train.max_steps=6", "train.save_every=2", batch)
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    args = overrides(tiny_model_dir, three_way_pairs, ref_out, *resumable)
    reference = launch(recipe, RECIPES[recipe], args)
    assert reference.returncode == 0, reference.stderr[-3000:]
    args = overrides(tiny_model_dir, three_way_pairs, out, *resumable)
    killed = launch(recipe, RECIPES[recipe], args, crash="step:3")
    assert killed.returncode == -9
    resumed = launch(recipe, RECIPES[recipe], [*args, "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert [r["step"] for r in records(out) if "train/loss" in r] == list(range(1, 7))
    assert series(out, "train/loss") == series(ref_out, "train/loss")  # same order: bit for bit
    assert_identical_weights(out / "final", ref_out / "final")


@pytest.mark.distributed
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_two_processes_match_one_process(recipe, tiny_model_dir, three_way_pairs, tmp_path):
    common = ("train.max_steps=3", "train.log_every=1", *SGD)  # see tests/weights.py
    one_args = overrides(tiny_model_dir, three_way_pairs, tmp_path / "one", *common,
                         "train.micro_batch_size=4")  # fmt: skip
    one = launch(recipe, RECIPES[recipe], one_args)
    assert one.returncode == 0, one.stderr[-3000:]
    two_args = overrides(tiny_model_dir, three_way_pairs, tmp_path / "two", *common,
                         "train.micro_batch_size=2")  # fmt: skip
    two = launch_two(recipe, RECIPES[recipe], two_args, tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = series(tmp_path / "one", "train/loss"), series(tmp_path / "two", "train/loss")
    assert len(a) == len(b) == 3
    assert_close_series(a, b, what="train/loss")  # summation order differs: 1 process vs 2
    assert_same_updates(tmp_path / "one" / "final", tmp_path / "two" / "final", tiny_model_dir)
