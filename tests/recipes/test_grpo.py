"""GRPO end to end on a 1-layer word-level model with a verifiable reward (the response contains
the word "a"): the reward rises, micro-batching is exact, guard-rails fire, options run, and a
killed run resumes to the same result."""

import pytest
import rl_common
import torch
from recipe_runs import SGD, launch_two
from rl_common import launch, metric, reward_rises, rl_overrides
from transformers import AutoModelForCausalLM
from weights import assert_close_series, assert_identical_weights, assert_same_updates

from alignlab.config import ConfigError, load_config
from alignlab.recipes import grpo
from alignlab.rl.guards import KLRunawayError

_one_thread = rl_common._one_thread  # module fixtures shared by the RL recipe tests
rl_assets = rl_common.rl_assets


def run_grpo(assets, out, *extra):
    return grpo.run(load_config(grpo.GRPOConfig, None, rl_overrides(assets, out, *extra)))


@pytest.mark.parametrize("variant", ["grpo", "dr_grpo"])
def test_grpo_raises_the_reward(rl_assets, tmp_path, variant):
    out = tmp_path / variant
    extra = ["dr_grpo=true", "train.lr=1e-2"] if variant == "dr_grpo" else []
    final = run_grpo(rl_assets, out, *extra)
    early, late = reward_rises(out)
    assert late > early + 0.2, (early, late)
    kl = [v for _, v in metric(out, "train/kl_ref")]
    assert kl[0] == pytest.approx(0.0, abs=1e-5) and kl[-1] > 0  # the policy left the reference
    for key in (
        "clip_fraction",
        "approx_kl",
        "entropy",
        "reward_std",
        "response_length",
        "kl_coef",
    ):
        assert metric(out, f"train/{key}"), key
    AutoModelForCausalLM.from_pretrained(final)


def test_micro_batches_give_the_same_update(rl_assets, tmp_path):
    # only the float summation order differs: compared under plain SGD (tests/weights.py)
    common = ("train.max_steps=2", "rl.mini_batch_size=16", "rl.num_iterations=2", *SGD)
    a = run_grpo(rl_assets, tmp_path / "m8", *common, "train.micro_batch_size=8")
    b = run_grpo(rl_assets, tmp_path / "m3", *common, "train.micro_batch_size=3")
    losses = [[v for _, v in metric(run.parent, "train/loss")] for run in (a, b)]
    assert_close_series(*losses, what="train/loss")
    assert_same_updates(a, b, start=rl_assets[0])
    # two passes over the rollout: the second one is off-policy, so the ratio moves
    assert max(v for _, v in metric(a.parent, "train/approx_kl")) > 0


def test_options_lora_adapter_reference_gold_stop_strings(rl_assets, tmp_path):
    _, _, reward = rl_assets
    out = tmp_path / "lora"
    final = run_grpo(
        rl_assets, out, "train.max_steps=2", "model.lora.enabled=true", "model.lora.r=2",
        "model.lora.target_modules=[q_proj,v_proj]", "reference.mode=adapter",
        f"rl.gold={reward}:fraction", "rl.stop_strings=[c]", "rl.missing_eos_penalty=0.5",
        "rl.reward_normalization=batch", "rl.reward_clip=2", "rl.kl_target=0.5",
        "rl.mini_batch_size=8", "train.micro_batch_size=4",
    )  # fmt: skip
    gold = metric(out, "train/gold_mean")
    assert len(gold) == 2 and all(0 <= v <= 1 for _, v in gold)
    assert [v for _, v in metric(out, "train/finished_fraction")][0] > 0.5  # "c" stops many
    assert (final / "model.safetensors").exists()


def test_kl_runaway_stops_the_run(rl_assets, tmp_path):
    with pytest.raises(KLRunawayError, match="rl.max_kl"):
        run_grpo(rl_assets, tmp_path / "kl", "train.lr=5e-2", "rl.max_kl=0.5", "rl.kl_coef=0.001")


def test_config_errors(rl_assets, tmp_path):
    with pytest.raises(ConfigError, match="rl.reward is required"):
        load_config(grpo.GRPOConfig, None, ["model.path=x", "data.path=y"])
    with pytest.raises(ConfigError, match="mini_batch_size"):
        load_config(
            grpo.GRPOConfig, None, rl_overrides(rl_assets, tmp_path, "rl.mini_batch_size=5")
        )
    with pytest.raises(ConfigError, match="lora"):
        load_config(
            grpo.GRPOConfig, None, rl_overrides(rl_assets, tmp_path, "reference.mode=adapter")
        )


RESUMABLE = (
    "train.max_steps=5",
    "train.save_every=2",
    "rl.kl_target=0.5",
    "train.keep_checkpoints=5",
)


def test_killed_run_resumes_to_the_same_result(rl_assets, tmp_path):
    reference = launch("grpo", "GRPOConfig", rl_overrides(rl_assets, tmp_path / "ref", *RESUMABLE))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    args = rl_overrides(rl_assets, out, *RESUMABLE)
    killed = launch("grpo", "GRPOConfig", args, crash="step:3")
    assert killed.returncode == -9
    resumed = launch("grpo", "GRPOConfig", [*args, "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    for key in ("train/reward_mean", "train/loss", "train/kl_coef", "train/kl_ref"):
        got, want = metric(out, key), metric(tmp_path / "ref", key)
        assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4, 5]
        assert got == want, key  # the same computation in the same order: bit for bit
    assert_identical_weights(out / "final", tmp_path / "ref" / "final")


@pytest.mark.distributed
def test_torchrun_two_processes_fsdp2(rl_assets, tmp_path):
    """FSDP2 on gloo: sampling from the unsharded copy, sharded log-prob/update forwards."""
    out = tmp_path / "ddp"
    args = rl_overrides(rl_assets, out, "train.max_steps=2", "train.save_every=1")
    done = launch_two("grpo", "GRPOConfig", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s for s, _ in metric(out, "train/reward_mean")] == [1, 2]
    assert (out / "final" / "model.safetensors").exists()


def test_single_update_takes_old_logps_from_its_own_forward(rl_assets, tmp_path):
    """With one optimizer step per rollout GRPO skips the separate scoring pass; the old
    log-probs filled in by the update's forward equal an independent pass of the sampling
    weights."""
    from alignlab.losses.policy import ppo_clip_token_losses, ppo_diagnostics, sequence_mean
    from alignlab.models.lm import TokenLogProbs
    from alignlab.rl.rollout import token_logps
    from alignlab.rl.run import RLRun

    cfg = load_config(grpo.GRPOConfig, None, rl_overrides(rl_assets, tmp_path / "one"))
    job = RLRun(cfg, "grpo")
    assert job.updates_per_step == 1
    exp = job.collect(0, score_old_logps=False)
    assert not exp.rollout.old_logps.any()  # not scored yet
    model_dir = rl_assets[0]
    before = TokenLogProbs(AutoModelForCausalLM.from_pretrained(model_dir))
    expected = token_logps(before, exp.rollout, 64)
    advantages = torch.ones(len(exp.rollout), 1)

    def losses(mb):
        logps = mb.forward(job.policy)
        old, adv = mb.old_logps(logps), mb.take(advantages)
        surrogate = ppo_clip_token_losses(logps, old, adv, cfg.rl.clip_eps)
        return surrogate, ppo_diagnostics(surrogate, logps - old, adv)

    stats = job.update_policy(0, exp.rollout, losses, sequence_mean)
    got = exp.rollout.old_logps
    width = expected.shape[1]
    torch.testing.assert_close(got[:, :width], expected, atol=1e-5, rtol=0)
    assert stats["clip_fraction"] == 0.0 and abs(stats["approx_kl"]) < 1e-9
    with pytest.raises(ValueError, match="one optimizer step"):  # more would reuse them stale
        two = RLRun(load_config(grpo.GRPOConfig, None, rl_overrides(
            rl_assets, tmp_path / "two", "rl.num_iterations=2")), "grpo")  # fmt: skip
        two.update_policy(0, two.collect(0, score_old_logps=False).rollout, losses, sequence_mean)
