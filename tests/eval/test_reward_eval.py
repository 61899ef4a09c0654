"""Reward-model evaluation (accuracy, ECE, Spearman), ensembles, the scorer and rm-eval CLI,
checked against hand-computed values."""

import json
import math

import pytest
import torch

from alignlab.config import DataConfig, ModelConfig
from alignlab.data.preference import build_preference_dataset
from alignlab.eval.reward_eval import (
    calibration,
    evaluate_pairs,
    gold_correlation,
    pairwise_accuracy,
    ranks,
    spearman,
)
from alignlab.eval.rm_cli import main as rm_eval_main
from alignlab.models.loading import load_tokenizer
from alignlab.models.reward import load_reward_model
from alignlab.models.reward_ensemble import RewardScorer, aggregate_rewards
from alignlab.training.checkpoint import save_reward_folder
from alignlab.training.distributed import Runtime

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_pairwise_accuracy_counts_ties_as_half():
    assert pairwise_accuracy([1.0, 2.0, 0.0, 5.0], [0.0, 3.0, 0.0, 4.0]) == pytest.approx(0.625)
    assert math.isnan(pairwise_accuracy([], []))


def test_ece_against_hand_computed_bins():
    # reward gaps giving p = σ(d) = 0.5, 0.75, 0.25 and 0.85
    gaps = [0.0, math.log(3), -math.log(3), math.log(0.85 / 0.15)]
    result = calibration(gaps, [0.0] * 4, n_bins=5)  # bins of width 0.1 over [0.5, 1]
    bins = result["bins"]
    assert [b["count"] for b in bins] == [1, 0, 2, 1, 0]
    # bin 0: confidence .5, accuracy .5 (a tie); bin 2: confidence .75, one right one wrong;
    # bin 3: confidence .85, right.  ECE = 1/4·0 + 2/4·|.5 - .75| + 1/4·|1 - .85| = .1625
    assert bins[2]["confidence"] == pytest.approx(0.75)
    assert bins[2]["accuracy"] == pytest.approx(0.5)
    assert result["ece"] == pytest.approx(0.1625)
    assert calibration([100.0], [0.0], n_bins=10)["bins"][-1]["count"] == 1  # p ≈ 1: last bin


def test_spearman_and_ranks_against_hand_computed_values():
    assert ranks([10, 30, 20, 30]) == [1, 3.5, 2, 3.5]
    # no ties: 1 - 6 Σd² / (n(n²-1)) = 1 - 6·2/60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties in y: ranks (1, 2, 3.5, 5, 3.5); Pearson of ranks = 8 / sqrt(10 · 9.5)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    result = gold_correlation([1, 2, 3], gold=[1, 3, 2], lengths=[3, 2, 1])
    assert result["spearman_gold"] == pytest.approx(0.5)
    assert result["length_spearman"] == pytest.approx(-1)


def test_evaluate_pairs_summary():
    result = evaluate_pairs([2.0, 1.0], [0.0, 2.0])
    assert result["accuracy"] == 0.5
    assert result["margin"] == pytest.approx(0.5)
    assert result["chosen_mean"] == pytest.approx(1.5)
    assert result["rejected_mean"] == pytest.approx(1.0)


def test_ensemble_aggregates_against_hand_computed_values():
    scores = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])  # K=3 members, N=2
    assert aggregate_rewards(scores, "mean").tolist() == [3.0, 2.0]
    assert aggregate_rewards(scores, "min").tolist() == [1.0, 2.0]
    std = math.sqrt(((1 - 3) ** 2 + 0 + (5 - 3) ** 2) / 3)  # population std: sqrt(8/3)
    lcb = aggregate_rewards(scores, "lcb", k=0.5).tolist()
    assert lcb == pytest.approx([3 - 0.5 * std, 2.0])
    assert aggregate_rewards(scores, "uwo", k=0.5).tolist() == pytest.approx([3 - 4 / 3, 2.0])
    assert aggregate_rewards(scores[:1], "lcb").tolist() == [1.0, 2.0]  # K=1: the member
    with pytest.raises(ValueError, match="aggregate"):
        aggregate_rewards(scores, "median")


@pytest.fixture(scope="module")
def two_reward_models(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("rms")
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    folders = []
    for seed in (0, 1):
        model = load_reward_model(cfg, tokenizer, seed=seed)
        folders.append(save_reward_folder(root / f"rm-{seed}", model, tokenizer, CPU))
    return folders


PAIRS = [
    {
        "prompt": [{"role": "user", "content": "What is 2 plus 3?"}],
        "chosen": [{"role": "assistant", "content": "2 plus 3 equals 5."}],
        "rejected": [{"role": "assistant", "content": "sorry cannot help"}],
        "gold_chosen": 1.0,
        "gold_rejected": -0.5,
    },
    {
        "prompt": [{"role": "user", "content": "What is 1 plus 1?"}],
        "chosen": [{"role": "assistant", "content": "1 plus 1 equals 2."}],
        "rejected": [{"role": "assistant", "content": "the answer is alpha beta gamma"}],
        "gold_chosen": 0.8,
        "gold_rejected": 0.1,
    },
    {
        "prompt": "What is the capital of delta?",
        "chosen": " the capital of delta is alpha",
        "rejected": " beta",
        "gold_chosen": 0.9,
        "gold_rejected": 0.0,
    },
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return path


def test_scorer_renders_inputs_exactly_like_training_pairs(two_reward_models, pairs_file):
    scorer = RewardScorer(two_reward_models[0])
    rows, _ = build_preference_dataset(DataConfig(path=str(pairs_file)), scorer.tokenizer)
    for pair, row in zip(PAIRS, rows):
        response = pair["chosen"]
        if isinstance(response, list):
            response = response[0]["content"]  # the harness hands over plain strings
        assert scorer.encode(pair["prompt"], response) == row["chosen_input_ids"]
        assert scorer.encode(pair["prompt"], pair["rejected"]) == row["rejected_input_ids"]


def test_scorer_ensemble_is_batch_invariant_and_aggregates_members(two_reward_models):
    prompts = [p["prompt"] for p in PAIRS] * 2
    responses = [p["chosen"] for p in PAIRS] + [p["rejected"] for p in PAIRS]
    singles = [RewardScorer(path).score_batch(prompts, responses) for path in two_reward_models]
    ensemble = RewardScorer(two_reward_models, aggregate="min", batch_size=4)
    members = ensemble.member_scores(prompts, responses)
    torch.testing.assert_close(members, torch.tensor(singles), atol=1e-5, rtol=0)
    got = ensemble.score_batch(prompts, responses)
    assert got == pytest.approx([min(a, b) for a, b in zip(*singles)], abs=1e-5)
    one_by_one = RewardScorer(two_reward_models, aggregate="min", batch_size=1)
    assert [one_by_one(p, r) for p, r in zip(prompts, responses)] == pytest.approx(got, abs=1e-5)


def test_rm_eval_cli_reports_metrics(two_reward_models, pairs_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = ["--pairs", str(pairs_file), "--aggregate", "lcb", "--out", str(out)]
    for folder in two_reward_models:
        args += ["--rm", str(folder)]
    assert rm_eval_main(args) == 0
    assert "accuracy" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["pairs"] == 3 and report["aggregate"] == "lcb"
    for key in ("accuracy", "ece", "margin", "spearman_gold", "length_spearman"):
        assert key in report
    assert len(report["calibration_bins"]) == 10
