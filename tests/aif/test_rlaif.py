"""RLAIF end to end on tiny models from the command line: AI labels (a judge, both orders)
-> soft-label reward model -> PPO, or the judge's score as the reward directly; a rerun
resumes at the first stage not done; the labels' agreement with a gold reward is measured."""

import json
import os

import pytest
from transformers import AutoModelForCausalLM
from word_model import _one_thread, build_word_model  # noqa: F401 - a fixture

from alignlab.cli import main
from alignlab.models.tiny import build_tiny_model, tiny_llama_config

PROMPTS = ["a b", "b c", "c a b", "b", "a", "c c"]
GOLD_PY = """
def contains_a(prompt, response):
    return float("a" in response.split())
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("rlaif")
    config = tiny_llama_config(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4)
    config.initializer_range = 0.5  # verdicts far from 0.5
    judge = build_tiny_model(root / "judge", tiny_tokenizer, config)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p, "family": f"f{i % 2}"}) + "\n" for i, p in enumerate(PROMPTS)
        )
    )
    gold = root / "gold.py"
    gold.write_text(GOLD_PY)
    return build_word_model(root / "policy"), judge, prompts, gold


def args(assets, out, *extra):
    policy, judge, prompts, gold = assets
    quiet = ["train.progress=false", "train.tensorboard=false", "train.max_steps=1"]
    return [
        "rlaif", f"model.path={policy}", f"data.path={prompts}", f"labeller.judge={judge}",
        f"labeller.gold={gold}:contains_a", f"output_dir={out}", "samples_per_prompt=4",
        "max_new_tokens=4", f"rm_overrides={json.dumps(quiet)}",
        f"rl_overrides={json.dumps([*quiet, 'rl.max_new_tokens=4', 'rl.prompts_per_step=2'])}",
        *extra,
    ]  # fmt: skip


def test_distilled_rlaif_runs_its_stages_and_resumes(assets, tmp_path):
    out = tmp_path / "run"
    assert main(args(assets, out)) == 0
    record = json.loads((out / "pipeline.json").read_text())
    final = record["final"]
    AutoModelForCausalLM.from_pretrained(final)  # a plain HF folder
    pairs = [json.loads(line) for line in (out / "labels" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(0.5 < p["chosen_probability"] <= 1.0 for p in pairs)
    assert final == str(out / "final") and record["made_from"] == str(out / "rl" / "final")
    stats = record["record"]["labels"]
    assert stats["human_labels"] == 0 and stats["comparisons"] >= len(pairs)
    agreement = stats["gold_agreement"]
    assert set(agreement) <= {"all", "f0", "f1"}
    for value in agreement.values():
        assert 0.0 <= value["agreement"] <= 1.0
    # the RM trained on the soft labels, and PPO's reward was that RM
    rm_record = json.loads((out / "rm" / "final" / "config.json").read_text())
    assert rm_record["architectures"] == ["LlamaForSequenceClassification"]
    assert '"soft_label": "chosen_probability"' in (out / "rm" / "run.json").read_text()

    stamps = {
        p: os.stat(p).st_mtime_ns
        for p in (out / "labels" / "pairs.jsonl", f"{final}/model.safetensors")
    }
    assert main(args(assets, out)) == 0  # every stage cached
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    # a lost RL stage is redone alone: the labels stay
    (out / "rl" / "source.txt").unlink()
    assert main(args(assets, out)) == 0
    assert (
        os.stat(out / "labels" / "pairs.jsonl").st_mtime_ns
        == stamps[out / "labels" / "pairs.jsonl"]
    )
    assert os.stat(f"{final}/model.safetensors").st_mtime_ns != stamps[f"{final}/model.safetensors"]


def test_direct_rlaif_rewards_with_the_judge(assets, tmp_path):
    out = tmp_path / "direct"
    assert main(args(assets, out, "mode=direct", "rl_recipe=grpo")) == 0
    rows = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["train/reward_mean"] for r in rows if "train/reward_mean" in r]
    assert rewards and all(1.0 <= r <= 5.0 for r in rewards)  # the judge's 1-5 rating
    assert not (out / "labels").exists() and not (out / "rm").exists()


def test_a_missing_judge_is_one_config_line(assets, tmp_path, capsys):
    policy, _, prompts, _ = assets
    code = main(["rlaif", f"model.path={policy}", f"data.path={prompts}", f"output_dir={tmp_path}"])
    assert code == 2
    assert "judge is required" in capsys.readouterr().err


def test_a_judge_folder_that_does_not_exist_stops_before_sampling(assets, tmp_path, capsys):
    policy, _, prompts, _ = assets
    out = tmp_path / "out"
    code = main([
        "rlaif", f"model.path={policy}", f"data.path={prompts}",
        f"labeller.judge={tmp_path / 'no-judge'}", f"output_dir={out}",
    ])  # fmt: skip
    assert code == 2
    assert "no-judge: no such folder" in capsys.readouterr().err
    assert not (out / "samples").exists()
