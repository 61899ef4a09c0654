"""The RRHF recipe end to end on a tiny model: ranked lists of different lengths, the loss
equals rrhf_loss + best-response NLL by hand at step 1, accumulation is exact."""

import json

import pytest
import torch
from recipe_runs import SGD, series
from weights import assert_close_series, assert_same_updates

from alignlab.config import load_config
from alignlab.recipes import rrhf


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ranked_records(n=16):
    rows = []
    for i in range(n):
        a, b = i % 7, (i * 3) % 5
        responses = [f" {a} plus {b} equals {a + b}.", " sorry cannot help"]
        scores = [2.0, 0.0]
        if i % 2:
            responses.append(f" {a} plus {b} equals {a + b + 1}.")
            scores.append(1.0)
        rows.append({"prompt": f"What is {a} plus {b}?", "responses": responses, "scores": scores})
    return rows


@pytest.fixture(scope="module")
def ranked_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rrhf") / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ranked_records()))
    return path


def run_rrhf(model_dir, data_file, out, *extra):
    args = [
        f"model.path={model_dir}", f"data.path={data_file}", f"train.output_dir={out}",
        "train.lr=3e-3", "train.progress=false", "train.tensorboard=false",
        "train.micro_batch_size=4", *extra,
    ]  # fmt: skip
    return rrhf.run(load_config(rrhf.RRHFConfig, None, args))


def test_rrhf_trains_on_lists_of_different_lengths(tiny_model_dir, ranked_file, tmp_path):
    out = tmp_path / "run"
    run_rrhf(tiny_model_dir, ranked_file, out, "train.max_steps=6", "data.eval_fraction=0.25")
    assert series(out, "train/nll")[-1] < series(out, "train/nll")[0]
    assert series(out, "train/rank_accuracy")[-1] >= series(out, "train/rank_accuracy")[0]
    assert series(out, "eval/rank_loss") and series(out, "eval/nll")
    total = [x + y for x, y in zip(series(out, "train/rank_loss"), series(out, "train/nll"))]
    torch.testing.assert_close(torch.tensor(total), torch.tensor(series(out, "train/loss")))


def test_grad_accumulation_2x2_equals_batch_4(tiny_model_dir, ranked_file, tmp_path):
    # only the float summation order differs: compared under plain SGD (tests/weights.py)
    big = run_rrhf(tiny_model_dir, ranked_file, tmp_path / "b4", "train.max_steps=3", *SGD)
    acc = run_rrhf(
        tiny_model_dir, ranked_file, tmp_path / "a2x2", "train.max_steps=3", *SGD,
        "train.micro_batch_size=2", "train.grad_accum=2",
    )  # fmt: skip
    for key in ("train/loss", "train/rank_loss", "train/nll"):
        assert_close_series(series(tmp_path / "b4", key), series(tmp_path / "a2x2", key), what=key)
    assert_same_updates(big, acc, start=tiny_model_dir)


def test_preference_pairs_train_as_two_response_lists(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} plus 1?", "chosen": f" {i} plus 1 equals {i + 1}.",
                        "rejected": " sorry cannot help"}) + "\n"
            for i in range(8)
        )
    )  # fmt: skip
    run_rrhf(tiny_model_dir, pairs, tmp_path / "run", "train.max_steps=2", "length_penalty=0.5")
    assert len(series(tmp_path / "run", "train/loss")) == 2


def test_pairs_as_win_rate_ranks_each_prompts_answers(tiny_model_dir, three_way_pairs, tmp_path):
    # 12 pairs over 4 prompts: as pairs, 12 two-response lists; by win rate, 4 lists of 3
    for pairs_as, lists in (("pairs", 12), ("win_rate", 4)):
        out = tmp_path / pairs_as
        run_rrhf(tiny_model_dir, three_way_pairs, out, "train.epochs=1", f"pairs_as={pairs_as}")
        assert series(out, "train/lists_seen")[-1] == lists
