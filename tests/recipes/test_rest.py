"""ReST end to end on a 1-layer word-level model with a verifiable reward (the response contains
the word "a"): the reward of the policy's samples rises, each Improve step trains on exactly the
samples at or above its rising threshold, a rerun with train.resume skips completed stages."""

import pytest
import rl_common
from rl_common import metric
from transformers import AutoModelForCausalLM

from alignlab.cli import main
from alignlab.config import ConfigError, load_config
from alignlab.recipes import rest
from alignlab.rl.sample_filter import at_or_above, quantile_threshold

_one_thread = rl_common._one_thread  # module fixtures shared by the RL recipe tests
rl_assets = rl_common.rl_assets
overrides = rl_common.sample_filter_overrides
rows = rl_common.read_jsonl


def run(assets, out, *extra):
    return rest.run(load_config(rest.ReSTConfig, None, overrides(assets, out, *extra)))


def test_filters_on_hand_made_rewards():
    rewards = [0.3, -1.0, 0.3, 2.0, 0.1, 0.7]
    assert at_or_above(rewards, 0.3) == [0, 2, 3, 5]  # ties with the threshold are kept
    assert at_or_above(rewards, 2.5) == []
    assert quantile_threshold(rewards, 0.0) == -1.0  # keeps everything
    assert quantile_threshold(rewards, 0.5) == 0.3  # an observed value: the lower median
    assert quantile_threshold(rewards, 1.0) == 2.0


def test_reward_rises_over_grow_steps(rl_assets, tmp_path):
    out = tmp_path / "run"
    args = ("grow_steps=3", "improve_steps=1", "thresholds=[1.0]", "threshold_mode=absolute")
    final = run(rl_assets, out, *args)
    grow_rewards = [v for _, v in metric(out, "rest/reward_mean")]
    assert len(grow_rewards) == 3
    assert grow_rewards[-1] > grow_rewards[0] + 0.15, grow_rewards
    assert all(v == 1.0 for _, v in metric(out, "rest/kept_reward_mean"))
    AutoModelForCausalLM.from_pretrained(final)
    assert final == out / "final"


def test_improve_steps_train_on_the_samples_above_rising_thresholds(rl_assets, tmp_path):
    _, _, reward = rl_assets
    out = tmp_path / "run"
    run(
        rl_assets, out, "grow_steps=1", "improve_steps=3", "thresholds=[0.0,0.7,0.95]",
        f"sampling.reward={reward}:fraction", f"sampling.gold={reward}:contains",
    )  # fmt: skip
    samples = rows(out / "grow_0" / "samples.jsonl")
    assert len(samples) == 16 * 8 and all("gold" in s for s in samples)
    thresholds = [v for _, v in metric(out, "rest/threshold")]
    assert thresholds[0] < thresholds[1] < thresholds[2], thresholds
    kept = [v for _, v in metric(out, "rest/kept")]
    for improve, (threshold, count) in enumerate(zip(thresholds, kept)):
        trained = rows(out / "grow_0" / f"improve_{improve}" / "sft.jsonl")
        above = [s for s in samples if s["reward"] >= threshold]
        assert len(above) == count
        # an empty response cannot be an SFT completion: left out
        assert trained == [s for s in above if s["completion"].strip()]
    assert kept[0] == len(samples) and kept[0] > kept[1] > kept[2] > 0
    assert [v for _, v in metric(out, "rest/quantile")] == [0.0, 0.7, 0.95]
    assert metric(out, "rest/gold_mean") and metric(out, "rest/kept_gold_mean")


def test_cli_rerun_with_resume_skips_completed_stages(rl_assets, tmp_path):
    out = tmp_path / "run"
    args = overrides(rl_assets, out, "grow_steps=2", "improve_steps=2", "thresholds=[0.0,0.5]")
    assert main(["rest", *args]) == 0
    stages = [out / f"grow_{g}" / f"improve_{i}" for g in range(2) for i in range(2)]
    files = [
        stage / name for stage in stages for name in ("final/model.safetensors", "metrics.jsonl")
    ]
    files += [out / f"grow_{g}" / "samples.jsonl" for g in range(2)]
    before = {p: p.stat().st_mtime_ns for p in files}
    records = metric(out, "rest/threshold")
    assert main(["rest", *args, "train.resume=true"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing sampled or trained
    assert metric(out, "rest/threshold") == records  # the summaries are logged again, once


def test_config_errors_name_the_field(rl_assets, tmp_path):
    def load(*extra):
        return load_config(rest.ReSTConfig, None, overrides(rl_assets, tmp_path, *extra))

    with pytest.raises(ConfigError, match="thresholds: 2 values for improve_steps=3"):
        load("thresholds=[0.1,0.5]")
    with pytest.raises(ConfigError, match="thresholds.*increase"):
        load("improve_steps=2", "thresholds=[0.5,0.5]")
    with pytest.raises(ConfigError, match="thresholds.*quantiles"):
        load("improve_steps=2", "thresholds=[0.5,2.0]")
    load("improve_steps=2", "thresholds=[0.5,2.0]", "threshold_mode=absolute")
    with pytest.raises(ConfigError, match="sampling.reward is required"):
        load("sampling.reward=")
    with pytest.raises(ConfigError, match="model.lora.save_merged=false"):
        load(
            "model.lora.enabled=true",
            "model.lora.save_merged=false",
            "model.lora.save_adapter=true",
        )
