"""Direct RLAIF: `judge:MODEL` as a reward spec, the judge's pointwise score as every RL
recipe's reward (local folder or endpoint), and its spec errors before any model loads."""

import json

import pytest
from judging import chat_reply
from word_model import build_word_model

from alignlab.cli import main
from alignlab.config import ConfigError
from alignlab.judges import LocalJudge
from alignlab.rl.rewards import RewardOptions, build_reward_fn, check_reward_spec

PROMPTS = ["a b", "b c", "c a b"]
RESPONSES = ["a", "b c b", "c"]


def test_a_local_judge_spec_scores_as_the_judge_does(judge_model_dir, judge_lm):
    reward_fn = build_reward_fn(f"judge:{judge_model_dir}")
    got = reward_fn(PROMPTS, RESPONSES)
    want = LocalJudge(*judge_lm).score(PROMPTS, RESPONSES)
    assert got == pytest.approx(want, abs=1e-6)
    assert all(1.0 <= r <= 5.0 for r in got)  # an expected rating on the 1-5 scale
    principled = RewardOptions(
        reward=f"judge:{judge_model_dir}", judge_principle="Prefer the shorter answer."
    ).build()[0](PROMPTS, RESPONSES)
    assert principled == pytest.approx(
        LocalJudge(*judge_lm).score(PROMPTS, RESPONSES, "Prefer the shorter answer."), abs=1e-6
    )
    assert principled != pytest.approx(got, abs=1e-6)


def test_an_endpoint_judge_spec_reads_the_verdict(stub):
    stub.respond = lambda index, body: (200, chat_reply("4", logprobs_field=False))
    reward_fn = build_reward_fn(f"judge:{stub.url}#teacher")
    assert reward_fn(PROMPTS, RESPONSES) == [4.0, 4.0, 4.0]
    assert {body["model"] for body, _ in stub.requests} == {"teacher"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("judge:", "name the judge"),
        ("judge:http://127.0.0.1:9/v1", "judge:BASE_URL#MODEL_NAME"),
        ("judge:http://127.0.0.1:9/v1#", "judge:BASE_URL#MODEL_NAME"),
    ],
)
def test_bad_judge_specs_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        check_reward_spec(spec, "rl.reward")


def test_grpo_trains_on_a_judges_score_from_the_cli(judge_model_dir, tmp_path):
    policy = build_word_model(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "grpo"
    code = main([
        "grpo", f"model.path={policy}", f"data.path={prompts}", f"rl.reward=judge:{judge_model_dir}",
        f"train.output_dir={out}", "train.max_steps=2", "train.progress=false",
        "train.tensorboard=false", "rl.max_new_tokens=4", "rl.prompts_per_step=2",
        "rl.samples_per_prompt=2",
    ])  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["train/reward_mean"] for r in rows if "train/reward_mean" in r]
    assert rewards and all(1.0 <= r <= 5.0 for r in rewards)
    assert (out / "final" / "model.safetensors").exists()
