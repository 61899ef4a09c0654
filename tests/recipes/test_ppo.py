"""PPO end to end on a 1-layer word-level model with a verifiable reward (the response contains
the word "a"): the reward rises and the value loss falls, options run (PPO epochs, k3, adaptive
KL, PPO-ptx, a critic from a reward-model folder), a killed run resumes to the same policy and
critic, and the policy update's extra-loss hook adds exactly its gradient."""

import json

import pytest
import rl_common
import torch
from rl_common import launch, metric, reward_rises, rl_overrides
from transformers import AutoModelForSequenceClassification
from weights import assert_identical_weights

from alignlab.config import ConfigError, ModelConfig, load_config
from alignlab.losses.policy import ppo_clip_token_losses, token_mean
from alignlab.models.loading import load_tokenizer
from alignlab.models.reward import load_reward_model, score_head
from alignlab.recipes import grpo, ppo
from alignlab.rl.run import RLRun
from alignlab.training.checkpoint import save_reward_folder
from alignlab.training.distributed import Runtime

_one_thread = rl_common._one_thread  # module fixtures shared by the RL recipe tests
rl_assets = rl_common.rl_assets
CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
CRITIC_LR = "critic.lr=1e-2"  # the zero-initialised head of a 16-wide model must move fast


def run(assets, out, *extra):
    return ppo.run(load_config(ppo.PPOConfig, None, rl_overrides(assets, out, CRITIC_LR, *extra)))


def mean(values):
    return sum(values) / len(values)


def test_reward_rises_and_value_loss_falls(rl_assets, tmp_path):
    out = tmp_path / "run"
    final = run(rl_assets, out)
    early, late = reward_rises(out)
    assert late > early + 0.2, (early, late)
    assert [v for _, v in metric(out, "train/kl_ref")][-1] > 0
    value_loss = [v for _, v in metric(out, "train/value_loss")]
    assert mean(value_loss[-3:]) < 0.6 * mean(value_loss[:3]), value_loss
    values = [v for _, v in metric(out, "train/values_mean")]
    assert values[0] == 0 and values[-1] > 0.2  # zero head at the start, then learns
    for key in ("value_error", "explained_variance", "value_clip_fraction", "returns_mean"):
        assert len(metric(out, f"train/{key}")) == 8, key
    # the critic is a plain sequence-classification folder with the trained head
    critic = AutoModelForSequenceClassification.from_pretrained(out / "critic")
    assert critic.config.num_labels == 1 and score_head(critic).weight.abs().sum() > 0
    assert (final / "model.safetensors").exists()


def test_options_epochs_k3_adaptive_kl_ptx(rl_assets, tmp_path):
    ptx_file = tmp_path / "ptx.jsonl"
    ptx_file.write_text("".join(json.dumps({"text": "c c c c"}) + "\n" for _ in range(6)))
    out = tmp_path / "options"
    run(
        rl_assets, out, "train.max_steps=3", "rl.num_iterations=2", "rl.mini_batch_size=16",
        "train.micro_batch_size=5", "kl_estimator=k3", "rl.kl_target=0.1", "rl.kl_horizon=100",
        f"ptx.path={ptx_file}", "ptx.coef=1.0", "ptx.batch_size=2", "lam=0.9", "gamma=0.99",
    )  # fmt: skip
    assert max(v for _, v in metric(out, "train/approx_kl")) > 0  # later passes are off-policy
    assert max(v for _, v in metric(out, "train/value_clip_fraction")) > 0
    betas = [v for _, v in metric(out, "train/kl_coef")]
    assert betas[0] == pytest.approx(0.04) and betas[-1] != betas[0]  # adaptive β moved
    nll = [v for _, v in metric(out, "train/ptx_nll")]
    assert len(nll) == 3 and nll[-1] < nll[0]  # the ptx term is trained on


def test_critic_from_a_reward_model_folder(rl_assets, tmp_path):
    model_dir, prompts, _ = rl_assets
    cfg = ModelConfig(path=str(model_dir))
    tokenizer = load_tokenizer(cfg)
    rm = save_reward_folder(
        tmp_path / "rm", load_reward_model(cfg, tokenizer, seed=4), tokenizer, CPU
    )
    out = tmp_path / "rm-run"
    # rl.reward is one RM folder: the critic starts from it, keeping its head
    run(rl_assets, out, f"rl.reward={rm}", "train.max_steps=2", "rl.kl_coef=0")
    assert metric(out, "train/values_mean")[0][1] != 0
    assert metric(out, "train/kl_ref")[0][1] == 0  # β = 0: no reference
    # critic.path=<policy> with critic.init=normal: a random head on the policy's body
    out = tmp_path / "policy-critic"
    run(rl_assets, out, f"critic.path={model_dir}", "critic.init=normal", "train.max_steps=1")
    assert metric(out, "train/values_mean")[0][1] != 0


def test_killed_run_resumes_to_the_same_policy_and_critic(rl_assets, tmp_path):
    steps = (
        "train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=5", CRITIC_LR,
        "rl.num_iterations=2", "rl.mini_batch_size=16", "rl.kl_target=0.1",
    )  # fmt: skip
    want = launch("ppo", "PPOConfig", rl_overrides(rl_assets, tmp_path / "ref", *steps))
    assert want.returncode == 0, want.stderr
    args = rl_overrides(rl_assets, tmp_path / "run", *steps)
    assert launch("ppo", "PPOConfig", args, crash="step:3").returncode == -9
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "critic.pt").exists()
    resumed = launch("ppo", "PPOConfig", [*args, "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr
    for key in ("train/loss", "train/value_loss", "train/values_mean", "train/kl_coef"):
        got, ref = metric(tmp_path / "run", key), metric(tmp_path / "ref", key)
        assert [s for s, _ in got] == [s for s, _ in ref] == [1, 2, 3, 4], key
        assert got == ref, key  # the same computation in the same order: bit for bit
    assert_identical_weights(tmp_path / "run" / "final", tmp_path / "ref" / "final")
    assert_identical_weights(tmp_path / "run" / "critic", tmp_path / "ref" / "critic")


def test_update_extra_loss_adds_its_gradient_once_per_optimizer_step(rl_assets, tmp_path):
    """With zero advantages the clipped surrogate has no gradient, so only the extra loss moves
    the policy: Adam's first step moves exactly the parameters it reaches."""
    overrides = rl_overrides(
        rl_assets, tmp_path, "rl.kl_coef=0", "rl.mini_batch_size=16", "train.max_grad_norm=0"
    )
    job = RLRun(load_config(grpo.GRPOConfig, None, overrides), "grpo")
    exp = job.collect(0)
    head = job.model.get_output_embeddings().weight
    norm = job.model.model.norm.weight
    before_head, before_norm = head.detach().clone(), norm.detach().clone()
    lrs = []

    def extra_loss():
        lrs.append(job.scheduler.get_last_lr()[0])  # the lr of this optimizer step
        return 0.5 * norm.sum()

    zero = torch.zeros(len(exp.rollout), 1)

    def surrogate(mb):
        logps = mb.forward(job.policy)
        return ppo_clip_token_losses(logps, mb.old_logps(logps), mb.take(zero), 0.2), {}

    stats = job.update_policy(0, exp.rollout, surrogate, token_mean, extra_loss=extra_loss)
    assert len(lrs) == 2  # 32 samples in mini-batches of 16: two optimizer steps
    assert stats["extra_loss"] == pytest.approx(0.5 * before_norm.sum().item(), rel=1e-2)
    assert torch.equal(head, before_head)  # the surrogate with A = 0 gives no gradient
    # a constant gradient: each Adam step (no weight decay) moves every weight by its lr
    torch.testing.assert_close(before_norm - norm.detach(), torch.full_like(norm, sum(lrs)))
    job.finish()


def test_config_errors(rl_assets, tmp_path):
    with pytest.raises(ConfigError, match="ptx.path"):
        load_config(ppo.PPOConfig, None, rl_overrides(rl_assets, tmp_path, "ptx.coef=1"))
    with pytest.raises(ConfigError, match="ptx.coef"):
        load_config(ppo.PPOConfig, None, rl_overrides(rl_assets, tmp_path, "ptx.path=x.jsonl"))
    with pytest.raises(ConfigError, match="kl_estimator"):
        load_config(ppo.PPOConfig, None, rl_overrides(rl_assets, tmp_path, "kl_estimator=k2"))
    with pytest.raises(ConfigError, match="critic.init"):
        load_config(ppo.PPOConfig, None, rl_overrides(rl_assets, tmp_path, "critic.init=rm"))
    with pytest.raises(ConfigError, match="lam"):
        load_config(ppo.PPOConfig, None, rl_overrides(rl_assets, tmp_path, "lam=1.5"))
