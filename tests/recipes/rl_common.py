"""Shared by the RL recipe tests (GRPO, RLOO, REINFORCE++): prompts, a verifiable reward,
runners and assertions; the tiny word-level model comes from tests/word_model.py."""

import pytest
from recipe_runs import launch  # noqa: F401 - re-exported to the RL tests
from word_model import _one_thread, build_word_model  # noqa: F401 - _one_thread is a fixture

PROMPTS = ["a b", "b c", "c a b", "b"]

REWARD_PY = '''
def contains(prompt, response, target="a"):
    """1 when the response contains the target word (a row's `target` key), else 0."""
    return float(target in response.split())


def fraction(prompt, response, target="a"):
    words = response.split()
    return sum(w == target for w in words) / max(len(words), 1)
'''


@pytest.fixture(scope="session")
def rl_assets(tmp_path_factory):
    """(model folder, prompts file with a `target` extra key, reward .py file)."""
    import json

    root = tmp_path_factory.mktemp("rl-assets")
    model_dir = build_word_model(root / "policy")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": PROMPTS[i % 4], "target": "a"}) + "\n" for i in range(16))
    )
    reward = root / "reward.py"
    reward.write_text(REWARD_PY)
    return model_dir, prompts, reward


def rl_overrides(assets, out, *extra):
    model_dir, prompts, reward = assets
    return [
        f"model.path={model_dir}",
        f"data.path={prompts}",
        f"rl.reward={reward}:contains",
        f"train.output_dir={out}",
        "train.lr=3e-3",
        "train.max_steps=8",
        "train.progress=false",
        "train.tensorboard=false",
        "rl.max_new_tokens=8",
        "rl.prompts_per_step=4",
        "rl.samples_per_prompt=8",
        *extra,
    ]


def metric(out, key):
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


def reward_rises(out, steps=3):
    """(reward of the first rollout, from the untrained policy; mean of the last `steps`).
    Learning is fast on this task (step 2 already gains), so a mean over the first steps
    would count part of the rise as its start."""
    values = [v for _, v in metric(out, "train/reward_mean")]
    return values[0], sum(values[-steps:]) / steps


def sample_filter_overrides(assets, out, *extra):
    """Options of the sample-filter-SFT recipes (ReST, RAFT) on the word model."""
    model_dir, prompts, reward = assets
    return [
        f"model.path={model_dir}",
        f"data.path={prompts}",
        f"sampling.reward={reward}:contains",
        f"train.output_dir={out}",
        "train.lr=3e-3",
        "train.progress=false",
        "train.tensorboard=false",
        "sampling.max_new_tokens=8",
        "sampling.samples_per_prompt=8",
        *extra,
    ]


def read_jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]
