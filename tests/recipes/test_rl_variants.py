"""DAPO, GSPO and CISPO end to end on the 1-layer word-level model with the verifiable reward
(the response contains "a"): the reward rises; DAPO's dynamic sampling fills the step with
informative groups and counts what it drew, its overlong shaping and filtering run, and a
killed DAPO run resumes to the same result."""

import pytest
import rl_common
import torch
from recipe_runs import launch_two
from rl_common import launch, metric, reward_rises, rl_overrides
from weights import assert_identical_weights

from alignlab.config import ConfigError, load_config
from alignlab.recipes import cispo, dapo, grpo, gspo, reinforce_pp, rloo
from alignlab.rl.experience import Experience, select_groups
from alignlab.rl.rollout import Rollout

_one_thread = rl_common._one_thread  # module fixtures shared by the RL recipe tests
rl_assets = rl_common.rl_assets
RECIPES = {
    "dapo": (dapo, dapo.DAPOConfig),
    "gspo": (gspo, gspo.GSPOConfig),
    "cispo": (cispo, cispo.CISPOConfig),
}


def run(name, assets, out, *extra):
    module, config = RECIPES[name]
    return module.run(load_config(config, None, rl_overrides(assets, out, *extra)))


@pytest.mark.parametrize("name", ["dapo", "gspo", "cispo"])
def test_reward_rises(name, rl_assets, tmp_path):
    out = tmp_path / name
    extra = ["mask_truncated=false"] if name == "dapo" else []
    run(name, rl_assets, out, *extra)
    early, late = reward_rises(out)
    assert late > early + 0.2, (early, late)
    for key in ("clip_fraction", "approx_kl", "kl_ref", "kl_coef"):
        assert metric(out, f"train/{key}"), key
    assert [v for _, v in metric(out, "train/kl_coef")][0] == 0.0  # the papers drop the KL term


def test_dapo_dynamic_sampling_and_overlong_shaping(rl_assets, tmp_path):
    out = tmp_path / "dapo"
    run("dapo", rl_assets, out, "train.max_steps=6", "overlong_buffer=4", "max_draws=2",
        "rl.num_iterations=2", "rl.mini_batch_size=16")  # fmt: skip
    flat = [v for _, v in metric(out, "train/ds_flat_groups")]
    draws = [v for _, v in metric(out, "train/ds_draws")]
    padded = [v for _, v in metric(out, "train/ds_padded_groups")]
    assert len(flat) == len(draws) == len(padded) == 6
    assert all(0 <= d <= 2 for d in draws) and all(p <= 4 for p in padded)
    # one process: a step draws again exactly when its first batch had a flat group
    assert all((d > 0) == (f > 0) for d, f in zip(draws, flat))
    assert all(p == 0 for d, p in zip(draws, padded) if d < 2)  # short only after every draw
    scores = [v for _, v in metric(out, "train/score_mean")]
    rewards = [v for _, v in metric(out, "train/reward_mean")]
    assert any(s < r for s, r in zip(scores, rewards))  # the overlong penalty lowers scores


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_truncated_importance_sampling_with_a_matching_sampler_changes_nothing(
    rl_assets, tmp_path, level
):
    """Here the sampler is the trainer's own model: the logged mismatch is float rounding and
    the TIS weights are 1 up to it, so the run follows the run without TIS."""
    from alignlab.recipes import grpo

    def grpo_run(out, *extra):
        config = load_config(
            grpo.GRPOConfig, None, rl_overrides(rl_assets, out, "train.max_steps=3", *extra)
        )
        return grpo.run(config)

    grpo_run(tmp_path / "plain")
    grpo_run(tmp_path / "tis", "rl.tis_cap=2", f"rl.tis_level={level}")
    diff = [v for _, v in metric(tmp_path / "tis", "train/sampler_logp_diff")]
    assert len(diff) == 3 and max(diff) < 1e-4
    assert all(abs(v) < 1e-3 for _, v in metric(tmp_path / "tis", "train/sampler_kl"))
    plain, tis = (metric(tmp_path / name, "train/loss") for name in ("plain", "tis"))
    assert [v for _, v in tis] == pytest.approx([v for _, v in plain], rel=1e-3, abs=1e-5)


def test_dapo_config_errors(rl_assets, tmp_path):
    with pytest.raises(ConfigError, match="overlong_buffer"):
        load_config(dapo.DAPOConfig, None, rl_overrides(rl_assets, tmp_path, "overlong_buffer=9"))
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        load_config(
            dapo.DAPOConfig, None, rl_overrides(rl_assets, tmp_path, "rl.samples_per_prompt=1")
        )
    with pytest.raises(ConfigError, match="did you mean rl.kl_coef"):
        load_config(dapo.DAPOConfig, None, rl_overrides(rl_assets, tmp_path, "rl.beta=0.1"))


@pytest.mark.parametrize(
    "config",
    [grpo.GRPOConfig, rloo.RLOOConfig, dapo.DAPOConfig, gspo.GSPOConfig, cispo.CISPOConfig],
)
def test_group_recipes_refuse_one_sample_per_prompt(config, rl_assets, tmp_path):
    one = rl_overrides(rl_assets, tmp_path, "rl.samples_per_prompt=1")
    with pytest.raises(ConfigError, match="samples_per_prompt=1: .* needs at least 2"):
        load_config(config, None, one)
    load_config(reinforce_pp.ReinforcePPConfig, None, one)  # its batch baseline needs no group
    with pytest.raises(ConfigError, match="samples_per_prompt=1"):
        load_config(reinforce_pp.ReinforcePPConfig, None, [*one, "baseline=true"])


def test_killed_dapo_run_resumes_to_the_same_result(rl_assets, tmp_path):
    steps = (
        "train.max_steps=4",
        "train.save_every=2",
        "train.keep_checkpoints=5",
        "mask_truncated=false",
    )
    want = launch("dapo", "DAPOConfig", rl_overrides(rl_assets, tmp_path / "ref", *steps))
    assert want.returncode == 0, want.stderr
    args = rl_overrides(rl_assets, tmp_path / "run", *steps)
    assert launch("dapo", "DAPOConfig", args, crash="step:3").returncode == -9
    resumed = launch("dapo", "DAPOConfig", [*args, "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr
    for key in ("train/loss", "train/ds_draws"):
        got, ref = metric(tmp_path / "run", key), metric(tmp_path / "ref", key)
        assert got == ref, key
    assert_identical_weights(tmp_path / "run" / "final", tmp_path / "ref" / "final")


@pytest.mark.distributed
def test_dapo_under_torchrun_two_processes(rl_assets, tmp_path):
    """Dynamic sampling's draws are collectives: every process draws as often as the one that
    needs it most, or the run would hang; two processes finish and log the summed counts."""
    out = tmp_path / "ddp"
    args = rl_overrides(rl_assets, out, "train.max_steps=3", "max_draws=2", "mask_truncated=false")
    done = launch_two("dapo", "DAPOConfig", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s for s, _ in metric(out, "train/ds_draws")] == [1, 2, 3]
    assert (out / "final" / "model.safetensors").exists()


def fake_experience(widths, scores, k=2):
    rows = len(scores)
    t = max(widths)
    ids = torch.zeros(rows, t, dtype=torch.long)
    labels = torch.full((rows, t), -100)
    for i, w in enumerate(widths):
        ids[i, :w] = i + 1
        labels[i, w - 1] = i + 1
    roll = Rollout(
        input_ids=ids, attention_mask=(ids > 0).long(), labels=labels,
        position_ids=torch.zeros_like(ids), old_logps=-ids.float(), group_ids=torch.arange(rows) // k,
        finished=torch.ones(rows, dtype=torch.bool), prompts=[f"p{i // k}" for i in range(rows)],
        texts=[f"t{i}" for i in range(rows)], generations=[None] * rows, samples_per_prompt=k,
    )  # fmt: skip
    s = torch.tensor(scores, dtype=torch.float32)
    return Experience(roll, s, s.clone(), None, -ids.float(), {"generation_s": 1.0})


def test_select_groups_keeps_whole_groups_in_order_and_pads_tokens():
    a = fake_experience([2, 3, 2, 2], [1.0, 0.0, 1.0, 1.0])
    b = fake_experience([4, 1], [0.0, 1.0])
    picked = select_groups([a, b], [(0, 0), (1, 0), (0, 1)])
    assert picked.rollout.texts == ["t0", "t1", "t0", "t1", "t2", "t3"]
    assert picked.scores.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert picked.rollout.input_ids.shape == (6, 4)
    assert picked.rollout.labels[0].tolist() == [-100, 1, -100, -100]  # padded with IGNORE
    assert picked.rollout.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert picked.ref_logps[2].tolist() == [-1.0, -1.0, -1.0, -1.0]
    assert picked.timings == {"generation_s": 2.0}
