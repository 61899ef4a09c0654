"""The KTO recipe end to end on a tiny model: unpaired and paired-split data, the step-level
KL reference point makes accumulation exact, the reference modes agree."""

import json

import pytest
import torch
from recipe_runs import SGD, series
from transformers import AutoModelForCausalLM
from weights import assert_close_series, assert_same_updates

from alignlab.config import ConfigError, load_config
from alignlab.recipes import kto


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def feedback_records(n=24):
    rows = []
    for i in range(n):
        a, b = i % 7, (i * 3) % 5
        good = i % 3 != 0
        answer = f" {a} plus {b} equals {a + b}." if good else " sorry cannot help"
        rows.append({"prompt": f"What is {a} plus {b}?", "completion": answer, "label": good})
    return rows


@pytest.fixture(scope="module")
def feedback_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("kto") / "feedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in feedback_records()))
    return path


def run_kto(model_dir, data_file, out, *extra):
    args = [
        f"model.path={model_dir}", f"data.path={data_file}", f"train.output_dir={out}",
        "train.lr=3e-3", "train.progress=false", "train.tensorboard=false",
        "train.micro_batch_size=4", *extra,
    ]  # fmt: skip
    return kto.run(load_config(kto.KTOConfig, None, args))


def test_kto_trains_and_separates_desirable_from_undesirable(
    tiny_model_dir, feedback_file, tmp_path
):
    out = tmp_path / "run"
    final = run_kto(
        tiny_model_dir, feedback_file, out, "train.max_steps=8", "train.micro_batch_size=8",
        "data.eval_fraction=0.25", "desirable_weight=1.0", "undesirable_weight=1.5",
    )  # fmt: skip
    margins = series(out, "train/rewards/margin")
    assert margins[0] == pytest.approx(0.0, abs=1e-6) and margins[-1] > 0.1
    assert series(out, "train/kl")[0] == pytest.approx(0.0, abs=1e-6)  # π == π_ref at step 1
    assert series(out, "train/loss")[-1] < series(out, "train/loss")[0]
    assert len(series(out, "eval/loss")) == 1 and len(series(out, "eval/kl")) == 1
    AutoModelForCausalLM.from_pretrained(final)


def test_grad_accumulation_2x2_equals_batch_4_and_precomputed_equals_model(
    tiny_model_dir, feedback_file, tmp_path
):
    # the KL pairs are formed over the whole step, so splitting it changes nothing but the
    # float summation order: compared under plain SGD (tests/weights.py)
    big = tmp_path / "b4"
    run_kto(tiny_model_dir, feedback_file, big, "train.max_steps=3", *SGD)
    acc = tmp_path / "a2x2"
    run_kto(
        tiny_model_dir, feedback_file, acc, "train.max_steps=3", "reference.mode=precomputed",
        "train.micro_batch_size=2", "train.grad_accum=2", *SGD,
    )  # fmt: skip
    assert (acc / "reference_logps.pt").exists()
    for key in ("train/loss", "train/kl", "train/rewards/margin"):
        assert_close_series(series(big, key), series(acc, key), what=key)
    assert_same_updates(big / "final", acc / "final", start=tiny_model_dir)


def test_paired_data_is_split_and_lora_adapter_reference_works(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} plus 1?", "chosen": f" {i} plus 1 equals {i + 1}.",
                        "rejected": " sorry cannot help"}) + "\n"
            for i in range(6)
        )
    )  # fmt: skip
    out = tmp_path / "run"
    run_kto(
        tiny_model_dir, pairs, out, "train.max_steps=3", "model.lora.enabled=true",
        "model.lora.r=4", "reference.mode=adapter",
    )  # fmt: skip
    assert series(out, "train/desirable_fraction")  # both labels present over the run
    assert series(out, "train/examples_seen")[-1] == 12


def test_pairs_as_win_rate_labels_each_answer_once(tiny_model_dir, three_way_pairs, tmp_path):
    # 12 pairs over 4 prompts: split, 24 examples (the middle answer both desirable and not);
    # by win rate, 8 (right: 2 of 2 won, desirable; refusal: 0 of 2; middle: 1 of 2, left out)
    for pairs_as, seen in (("pairs", 24), ("win_rate", 8)):
        out = tmp_path / pairs_as
        run_kto(tiny_model_dir, three_way_pairs, out, "train.epochs=1", f"pairs_as={pairs_as}")
        assert series(out, "train/examples_seen")[-1] == seen


def test_kto_needs_two_examples_per_step(tiny_model_dir, feedback_file, tmp_path):
    with pytest.raises(ConfigError, match=">= 2"):
        load_config(
            kto.KTOConfig, None,
            [f"model.path={tiny_model_dir}", f"data.path={feedback_file}",
             "train.micro_batch_size=1"],
        )  # fmt: skip
