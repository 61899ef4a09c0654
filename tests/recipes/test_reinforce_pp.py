"""reinforce_pp end to end on a 1-layer word-level model with a verifiable reward (the response contains
the word "a"): the reward rises, options run, a killed run resumes to the same result."""

import rl_common
from rl_common import launch, metric, reward_rises, rl_overrides
from weights import assert_identical_weights

from alignlab.config import load_config
from alignlab.recipes import reinforce_pp

_one_thread = rl_common._one_thread  # module fixtures shared by the RL recipe tests
rl_assets = rl_common.rl_assets


def run(assets, out, *extra):
    return reinforce_pp.run(
        load_config(reinforce_pp.ReinforcePPConfig, None, rl_overrides(assets, out, *extra))
    )


def test_reward_rises(rl_assets, tmp_path):
    out = tmp_path / "run"
    run(rl_assets, out)
    early, late = reward_rises(out)
    assert late > early + 0.2, (early, late)
    assert [v for _, v in metric(out, "train/kl_ref")][-1] > 0


def test_options(rl_assets, tmp_path):
    out = tmp_path / "options"
    final = run(
        rl_assets,
        out,
        "train.max_steps=2",
        "rl.num_iterations=2",
        "rl.mini_batch_size=4",
        "rl.samples_per_prompt=1",
        "rl.prompts_per_step=8",
    )
    assert max(v for _, v in metric(out, "train/approx_kl")) > 0  # second pass is off-policy
    assert (final / "model.safetensors").exists()


def test_killed_run_resumes_to_the_same_result(rl_assets, tmp_path):
    steps = ("train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=5")
    want = launch(
        "reinforce_pp", "ReinforcePPConfig", rl_overrides(rl_assets, tmp_path / "ref", *steps)
    )
    assert want.returncode == 0, want.stderr
    args = rl_overrides(rl_assets, tmp_path / "run", *steps)
    assert launch("reinforce_pp", "ReinforcePPConfig", args, crash="step:3").returncode == -9
    resumed = launch("reinforce_pp", "ReinforcePPConfig", [*args, "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr
    got, ref = metric(tmp_path / "run", "train/loss"), metric(tmp_path / "ref", "train/loss")
    assert [s for s, _ in got] == [s for s, _ in ref] == [1, 2, 3, 4]
    assert got == ref  # the same computation in the same order: bit for bit
    assert_identical_weights(tmp_path / "run" / "final", tmp_path / "ref" / "final")


def test_baseline_variant_raises_the_reward(rl_assets, tmp_path):
    out = tmp_path / "baseline"
    run(rl_assets, out, "baseline=true")
    early, late = reward_rises(out)
    assert late > early + 0.2, (early, late)
    assert [v for _, v in metric(out, "train/kl_ref")][-1] > 0
