"""RAFT / rejection-sampling fine-tuning end to end on a 1-layer word-level model with a
verifiable reward (the response contains the word "a"): the reward rises over iterations, each
iteration trains on exactly the best sample per prompt (above min_reward), a rerun with
train.resume skips completed iterations."""

import rl_common
from rl_common import metric
from transformers import AutoModelForCausalLM

from alignlab.cli import main
from alignlab.config import load_config
from alignlab.recipes import raft
from alignlab.rl.sample_filter import best_per_prompt

_one_thread = rl_common._one_thread  # module fixtures shared by the RL recipe tests
rl_assets = rl_common.rl_assets
overrides = rl_common.sample_filter_overrides
rows = rl_common.read_jsonl


def run(assets, out, *extra):
    return raft.run(load_config(raft.RAFTConfig, None, overrides(assets, out, *extra)))


def test_best_per_prompt_on_hand_made_rewards():
    rewards = [0.1, 0.5, 0.5, 0.2, -3.0, -1.0, -2.0, -1.5, 0.0, 0.0, 0.0, 0.0]
    assert best_per_prompt(rewards, 4) == [1, 5, 8]  # the first of tied maxima
    assert best_per_prompt(rewards, 1) == list(range(12))


def test_reward_rises_over_iterations(rl_assets, tmp_path):
    out = tmp_path / "run"
    final = run(rl_assets, out, "iterations=4", "train.epochs=4")
    rewards = [v for _, v in metric(out, "raft/reward_mean")]
    assert len(rewards) == 4
    assert rewards[-1] > rewards[0] + 0.15, rewards
    best = [v for _, v in metric(out, "raft/best_reward_mean")]
    assert all(b >= r for b, r in zip(best, rewards))
    AutoModelForCausalLM.from_pretrained(final)


def test_trains_on_the_best_sample_per_prompt_above_min_reward(rl_assets, tmp_path):
    _, _, reward = rl_assets
    out = tmp_path / "run"
    run(
        rl_assets, out, "iterations=2", "prompts_per_iteration=6", "min_reward=0.5",
        f"sampling.reward={reward}:fraction", f"sampling.gold={reward}:contains",
    )  # fmt: skip
    dropped = 0
    for iteration in range(2):
        stage = out / f"iteration_{iteration}"
        samples = rows(stage / "samples.jsonl")
        assert len(samples) == 6 * 8 and all("gold" in s for s in samples)
        best = []
        for p in range(6):
            group = samples[p * 8 : (p + 1) * 8]
            top = max(s["reward"] for s in group)
            best.append(next(s for s in group if s["reward"] == top))
        want = [s for s in best if s["reward"] >= 0.5]
        assert want and rows(stage / "sft.jsonl") == want
        assert metric(out, "raft/kept")[iteration][1] == len(want)
        dropped += 6 - len(want)
    assert dropped > 0  # min_reward did filter
    assert metric(out, "raft/gold_mean") and metric(out, "raft/kept_gold_mean")


def test_cli_rerun_with_resume_skips_completed_iterations(rl_assets, tmp_path):
    out = tmp_path / "run"
    args = overrides(rl_assets, out, "iterations=2")
    assert main(["raft", *args]) == 0
    names = ("final/model.safetensors", "samples.jsonl", "sft.jsonl", "metrics.jsonl")
    files = [out / f"iteration_{i}" / name for i in range(2) for name in names]
    before = {p: p.stat().st_mtime_ns for p in files}
    records = metric(out, "raft/reward_mean")
    assert main(["raft", *args, "train.resume=true"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing sampled or trained
    assert metric(out, "raft/reward_mean") == records
    assert main(["raft", *overrides(rl_assets, out, "min_reward=x")]) == 2  # a config error
