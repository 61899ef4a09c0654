"""The reward-model recipe end to end on a tiny model: learning, invariants, resume, LoRA,
ensembles, and the lab's annotator labels flowing into training."""

import json
import math
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from recipe_runs import SGD
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
from weights import assert_close_series, assert_identical_weights, assert_same_updates

from alignlab.config import ConfigError, DataConfig, ModelConfig, load_config
from alignlab.data.pairs import collate_pairs, split_pairs
from alignlab.data.preference import build_preference_dataset
from alignlab.data.schema import DataError, Record
from alignlab.eval.reward_eval import pairwise_accuracy
from alignlab.models.loading import load_tokenizer
from alignlab.models.reward import load_reward_model, reward_forward
from alignlab.models.reward_ensemble import RewardScorer
from alignlab.recipes import rm

FILLER = "alpha beta delta what is the capital of plus equals answer".split()
MARKER = "gamma"


def marker_pairs(n, seed):
    """Chosen responses hold the marker word somewhere; rejected ones never do."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(7), rng.randrange(5)
        good = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        bad = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        good.insert(rng.randrange(len(good) + 1), MARKER)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                "chosen": [{"role": "assistant", "content": " ".join(good)}],
                "rejected": [{"role": "assistant", "content": " ".join(bad)}],
                "margin": rng.choice([0.0, 0.5, 1.0]),
            }
        )
    return rows


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    files = {}
    for name, (n, seed) in {"train": (64, 0), "heldout": (64, 1)}.items():
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in marker_pairs(n, seed)))
    return files


def overrides(model_dir, data_file, out, *extra):
    return [
        f"model.path={model_dir}",
        f"data.path={data_file}",
        f"train.output_dir={out}",
        "train.lr=3e-3",
        "train.warmup_steps=2",
        "train.progress=false",
        "train.tensorboard=false",
        *extra,
    ]


def run_rm(model_dir, data_file, out, *extra):
    return rm.run(load_config(rm.RMConfig, None, overrides(model_dir, data_file, out, *extra)))


def records(out, key="train/loss"):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


def heldout_accuracy(model, tokenizer, path):
    rows, _ = build_preference_dataset(DataConfig(path=str(path)), tokenizer)
    with torch.no_grad():
        batch = collate_pairs(rows, tokenizer.pad_token_id)
        chosen, rejected = split_pairs(reward_forward(model.eval(), batch))
    return pairwise_accuracy(chosen.tolist(), rejected.tolist())


# --- objective pieces ---


def test_pair_losses_margin_and_centring_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5])
    margin = torch.tensor([0.5, 0.0])
    got = rm.pair_losses(chosen, rejected, margin, center=0.1)
    want = [
        -math.log(1 / (1 + math.exp(-(1.0 - 0.0 - 0.5)))) + 0.1 * 1.0**2,
        -math.log(1 / (1 + math.exp(-(0.0 - 0.5)))) + 0.1 * 0.5**2,
    ]
    assert got.tolist() == pytest.approx(want)


def test_margin_column_or_difference_of_columns():
    rows = [
        Record({"margin": 2, "gold_chosen": 0.5, "gold_rejected": -0.25}, "f.jsonl", 1),
        Record({"margin": 1, "gold_chosen": 0.0, "gold_rejected": 0.0}, "f.jsonl", 2),
    ]
    assert rm.margin_values(rows, "margin", 0.5) == [1.0, 0.5]
    assert rm.margin_values(rows, "gold_chosen-gold_rejected", 1.0) == [0.75, 0.0]
    with pytest.raises(ValueError, match="f.jsonl:1"):
        rm.margin_values(rows, "nope", 1.0)


def test_margin_refuses_configs_that_drop_pairs(tiny_model_dir, pair_files, tmp_path):
    args = overrides(tiny_model_dir, pair_files["train"], tmp_path, "reward.margin=margin")
    with pytest.raises(ConfigError, match="every pair must be kept"):
        load_config(rm.RMConfig, None, [*args, "data.on_bad_example=skip"])


def test_soft_label_targets_replace_the_hard_vote_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5])
    target = torch.tensor([0.75, 0.5])
    got = rm.pair_losses(chosen, rejected, None, center=0.0, target=target)
    d = [1.0, -0.5]
    want = [0.75 * _nls(d[0]) + 0.25 * _nls(-d[0]), 0.5 * _nls(d[1]) + 0.5 * _nls(-d[1])]
    torch.testing.assert_close(got, torch.tensor(want))


def _nls(x):
    return math.log1p(math.exp(-x))  # -log σ(x)


def test_soft_label_is_read_checked_and_exclusive_with_margin(tiny_model_dir, tmp_path):
    rows = marker_pairs(8, 3)
    for i, row in enumerate(rows):
        row["chosen_probability"] = 0.5 + i / 16
    data = tmp_path / "soft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = overrides(tiny_model_dir, data, tmp_path / "out", "reward.soft_label=chosen_probability")
    cfg = load_config(rm.RMConfig, None, args)
    loaded, _ = rm.load_pairs(cfg, load_tokenizer(cfg.model))
    assert [r["target"] for r in loaded] == [r["chosen_probability"] for r in rows]
    with pytest.raises(ConfigError, match="choose one"):
        load_config(rm.RMConfig, None, [*args, "reward.margin=margin"])
    rows[5]["chosen_probability"] = 1.5
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"soft.jsonl:6.*probability in \[0, 1\]"):
        rm.load_pairs(cfg, load_tokenizer(cfg.model))


def test_soft_labels_of_one_half_teach_no_preference(tiny_model_dir, pair_files, tmp_path):
    """The same pairs, hard labels against P(chosen) = 0.5: the hard run separates the
    sides, the soft one is pulled back to no preference."""
    rows = [json.loads(line) for line in pair_files["train"].read_text().splitlines()]
    half = tmp_path / "half.jsonl"
    half.write_text("".join(json.dumps(r | {"p": 0.5}) + "\n" for r in rows))
    common = ("train.max_steps=16", "train.micro_batch_size=16", "data.eval_fraction=0")
    run_rm(tiny_model_dir, pair_files["train"], tmp_path / "hard", *common)
    run_rm(tiny_model_dir, half, tmp_path / "soft", *common, "reward.soft_label=p")
    hard = records(tmp_path / "hard", "train/margin")[-1][1]
    soft = records(tmp_path / "soft", "train/margin")[-1][1]
    assert hard > 1.0 and abs(soft) < hard / 4, (hard, soft)


def test_bootstrap_resample_is_seeded_and_with_replacement():
    rows = list(range(50))
    a, b = rm.bootstrap_resample(rows, 0), rm.bootstrap_resample(rows, 1)
    assert a == rm.bootstrap_resample(rows, 0) and a != b
    assert len(a) == 50 and len(set(a)) < 50


# --- training ---


def test_bt_training_learns_the_marker_on_heldout_pairs(tiny_model_dir, pair_files, tmp_path):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    before = heldout_accuracy(
        load_reward_model(cfg, tokenizer, seed=0), tokenizer, pair_files["heldout"]
    )
    out = tmp_path / "rm"
    final = run_rm(
        tiny_model_dir, pair_files["train"], out, "train.max_steps=16",
        "train.micro_batch_size=16", f"data.eval_path={pair_files['heldout']}",
        "train.eval_every=8", "reward.margin=margin", "reward.center_rewards_coef=0.01",
    )  # fmt: skip
    after = AutoModelForSequenceClassification.from_pretrained(final)
    accuracy = heldout_accuracy(after, tokenizer, pair_files["heldout"])
    assert before < 0.7 and accuracy >= 0.9, (before, accuracy)
    evals = records(out, "eval/accuracy")
    assert [s for s, _ in evals] == [8, 16] and evals[-1][1] == pytest.approx(accuracy)
    assert records(out, "eval/ece") and records(out, "train/margin")[-1][1] > 0
    # the scorer on the saved folder agrees (what the eval harness would call)
    scorer = RewardScorer(final)
    pair = marker_pairs(1, 7)[0]
    chosen, rejected = (pair[k][0]["content"] for k in ("chosen", "rejected"))
    assert scorer(pair["prompt"], chosen) > scorer(pair["prompt"], rejected)


def test_grad_accumulation_2x2_equals_batch_4(tiny_model_dir, pair_files, tmp_path):
    # equal up to float summation order (the padded width of a micro-batch differs): compared
    # under plain SGD (tests/weights.py)
    common = ("train.max_steps=3", "reward.center_rewards_coef=0.1", "reward.margin=margin", *SGD)
    big = run_rm(tiny_model_dir, pair_files["train"], tmp_path / "b4", *common,
                 "train.micro_batch_size=4")  # fmt: skip
    acc = run_rm(tiny_model_dir, pair_files["train"], tmp_path / "a2x2", *common,
                 "train.micro_batch_size=2", "train.grad_accum=2")  # fmt: skip
    for key in ("train/loss", "train/accuracy", "train/margin"):
        got, want = records(tmp_path / "a2x2", key), records(tmp_path / "b4", key)
        assert_close_series([x for _, x in got], [y for _, y in want], what=key)
    assert_same_updates(big, acc, start=tiny_model_dir)


def launch(model_dir, data_file, out, *extra, crash=None):
    env = {**os.environ, "ALIGNLAB_CRASH": crash or "", "OMP_NUM_THREADS": "1"}
    code = (
        "import sys; from alignlab.config import load_config; from alignlab.recipes import rm; "
        "rm.run(load_config(rm.RMConfig, None, sys.argv[1:]))"
    )
    args = [sys.executable, "-c", code, *overrides(model_dir, data_file, out, *extra)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


RESUMABLE = ("train.max_steps=6", "train.save_every=2", "train.micro_batch_size=4",
             "train.keep_checkpoints=5", "reward.center_rewards_coef=0.01")  # fmt: skip


def test_killed_run_resumes_to_the_same_result(tiny_model_dir, pair_files, tmp_path):
    reference = launch(tiny_model_dir, pair_files["train"], tmp_path / "ref", *RESUMABLE)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    killed = launch(tiny_model_dir, pair_files["train"], out, *RESUMABLE, crash="step:3")
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    resumed = launch(tiny_model_dir, pair_files["train"], out, *RESUMABLE, "train.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "step-00000002" in resumed.stdout
    got, want = records(out), records(tmp_path / "ref")
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 7))
    assert got == want  # the same computation in the same order: bit for bit
    assert_identical_weights(out / "final", tmp_path / "ref" / "final")


def test_lora_run_saves_plain_folder_and_resumes_from_adapter(tiny_model_dir, pair_files, tmp_path):
    lora = ("model.lora.enabled=true", "model.lora.r=4", "model.lora.save_adapter=true",
            "train.max_steps=4", "train.save_every=2", "train.micro_batch_size=4",
            "train.lr=1e-2")  # fmt: skip
    ref = tmp_path / "ref"
    final = run_rm(tiny_model_dir, pair_files["train"], ref, *lora)
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert (final / "adapter" / "adapter_model.safetensors").exists()
    tokenizer = load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    base = load_reward_model(ModelConfig(path=str(tiny_model_dir)), tokenizer, seed=0)
    assert not torch.equal(model.score.weight, base.score.weight)  # the head trained
    # resume from the step-2 checkpoint (adapter + training state) of the finished run
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref / "checkpoints" / "step-00000002", out / "checkpoints" / "step-00000002")
    shutil.copy(ref / "metrics.jsonl", out / "metrics.jsonl")
    run_rm(tiny_model_dir, pair_files["train"], out, *lora, "train.resume=true")
    assert records(out) == records(ref)  # the same computation in the same order
    assert_identical_weights(out / "final", final)


def test_bootstrap_ensemble_trains_distinct_members(tiny_model_dir, pair_files, tmp_path):
    out = tmp_path / "ens"
    result = run_rm(
        tiny_model_dir, pair_files["train"], out, "train.max_steps=2", "train.micro_batch_size=8",
        "reward.ensemble_size=2", "reward.bootstrap=true",
    )  # fmt: skip
    assert result == out
    members = [out / f"member-{i}" / "final" for i in range(2)]
    heads = [load_file(m / "model.safetensors")["score.weight"] for m in members]
    assert not torch.equal(heads[0], heads[1])
    configs = [yaml.safe_load((out / f"member-{i}" / "config.yaml").read_text()) for i in range(2)]
    assert [c["train"]["seed"] for c in configs] == [0, 1]
    scorer = RewardScorer(members, aggregate="lcb", k=1.0)
    pair = marker_pairs(1, 3)[0]
    assert math.isfinite(scorer(pair["prompt"], pair["chosen"][0]["content"]))


def test_lab_annotator_labels_flow_into_rm_training(tiny_model_dir, tmp_path):
    from alignlab.lab import Annotator, LabWorld, export_datasets
    from alignlab.lab.reward_eval import reward_vs_gold

    world = LabWorld(seed=0)
    panel = [Annotator(temperature=0.1, flip_rate=0.1), Annotator(length_bias=0.05)]
    paths = export_datasets(
        world, tmp_path / "lab", n_train=8, n_preference=48, n_rl_prompts=4, n_valid=2,
        n_heldout=2, annotators=panel,
    )  # fmt: skip
    assert json.loads(paths["manifest"].read_text())["labels"]["cost"] == 48 * 2
    out = tmp_path / "rm"
    final = run_rm(
        tiny_model_dir, paths["preference"], out, "train.max_steps=3",
        "train.micro_batch_size=8", "data.max_length=96", "data.truncation=keep_end",
        "data.eval_fraction=0.25", "reward.margin=gold_chosen-gold_rejected",
    )  # fmt: skip
    assert all(math.isfinite(v) for _, v in records(out))
    assert records(out, "eval/accuracy")
    result = reward_vs_gold(RewardScorer(final, max_length=96), world, n=6, per_prompt=3)
    assert result["responses"] == 18
    for key in ("spearman_gold", "length_spearman", "accuracy_gold_pairs"):
        assert key in result
