"""judge_reward_fn: a judge's pointwise score as a reward function of alignlab.rl.rewards'
shape, direct and through the module:function route."""

import math
import sys
import types

import pytest
from judging import FavoursLM, StubJudge

from alignlab.judges import JudgeError, LocalJudge, judge_reward_fn
from alignlab.rl.rewards import build_reward_fn, callable_reward


def test_one_finite_float_per_response_from_a_local_judge(judge_lm):
    model, tokenizer = judge_lm
    reward_fn = judge_reward_fn(LocalJudge(model, tokenizer, batch_size=4), principle="honesty")
    prompts = ["What is 1 plus 2?", [{"role": "user", "content": "What is 2 plus 2?"}], "hi"]
    rewards = reward_fn(prompts, ["3", "4", "sorry cannot help"], [{"gold": 1}] * 3)
    assert len(rewards) == 3
    assert all(isinstance(r, float) and math.isfinite(r) and 1 <= r <= 5 for r in rewards)
    assert reward_fn.batched is True


def test_a_fake_judge_favouring_one_rating_scores_it(tiny_tokenizer):
    # every rating token "5" gets logit log 3, the other four 0: E = (1+2+3+4 + 5*3) / 7
    judge = LocalJudge(FavoursLM(tiny_tokenizer, "5", math.log(3)), tiny_tokenizer)
    assert judge_reward_fn(judge)(["q", "r"], ["a", "b"]) == pytest.approx([25 / 7] * 2)


def test_through_the_module_function_route_it_is_called_once_per_batch(monkeypatch):
    judge = StubJudge()
    module = types.ModuleType("judge_rewards_for_test")
    module.reward = judge_reward_fn(judge)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    reward_fn = build_reward_fn(f"{module.__name__}:reward")
    assert reward_fn(["q", "q", "q"], ["a", "abcd", "ab"], [{}, {}, {}]) == [2.0, 5.0, 3.0]
    assert judge.calls == 1
    assert callable_reward(module.reward)(["q"], ["abc"]) == [4.0]


def test_a_judge_that_returns_too_few_scores_is_an_error():
    judge = StubJudge()
    judge.score = lambda prompts, responses, principle=None: [1.0]
    with pytest.raises(JudgeError, match="scored 2 responses as \\[1.0\\]"):
        judge_reward_fn(judge)(["q", "q"], ["a", "b"])
