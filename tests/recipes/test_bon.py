"""Best-of-n: the argmax per prompt (hand-made stub reward and the verifiable reward "contains
the word a"), better than a random pick, the analytic KL, evaluation like a model, the CLI."""

import json
import math

import pytest

from alignlab.cli import main
from alignlab.eval.harness import EvalOptions, EvalPrompt, evaluate_model, load_for_eval
from alignlab.eval.report import markdown_table
from alignlab.recipes.bon import best_of_n, evaluate_best_of_n, kl_best_of_n
from alignlab.rl.rewards import callable_reward

PROMPTS = ["a b", "b c", "c a b", "b", "c", "a"]


def fraction_of_a(prompt, response):
    words = response.split()
    return sum(w == "a" for w in words) / max(len(words), 1)


@pytest.fixture(scope="module")
def policy(small_model_dirs):
    return load_for_eval(small_model_dirs[0], "cpu")


def test_kl_formula():
    assert kl_best_of_n(1) == 0.0
    assert kl_best_of_n(4) == pytest.approx(math.log(4) - 3 / 4)
    values = [kl_best_of_n(n) for n in (1, 2, 4, 8, 16)]
    assert values == sorted(values) and values[-1] < math.log(16)
    with pytest.raises(ValueError):
        kl_best_of_n(0)


def test_picks_the_argmax_of_a_stub_reward(policy):
    def length(prompts, texts, extras):  # hand-made: the longest response wins
        return [float(len(text.split())) for text in texts]

    samples, picked = best_of_n(
        policy.model, policy.tokenizer, PROMPTS, length, 5, max_new_tokens=6, seed=1
    )
    assert len(samples) == 6 * 5 and len(picked) == 6
    for p, pick in enumerate(picked):
        group = [len(samples.texts[j].split()) for j in range(p * 5, (p + 1) * 5)]
        assert pick == p * 5 + group.index(max(group))  # the first of tied maxima
        assert samples.prompts[pick] == PROMPTS[p]


def test_beats_a_random_pick_on_the_verifiable_reward(policy):
    reward = callable_reward(fraction_of_a)
    samples, picked = best_of_n(
        policy.model, policy.tokenizer, PROMPTS * 4, reward, 8, max_new_tokens=6, seed=2
    )
    picked_mean = sum(samples.rewards[j] for j in picked) / len(picked)
    random_pick_mean = sum(samples.rewards) / len(samples)  # the expectation of a random pick
    assert picked_mean > random_pick_mean + 0.1, (picked_mean, random_pick_mean)
    for p, pick in enumerate(picked):
        assert samples.rewards[pick] == max(samples.rewards[p * 8 : (p + 1) * 8])


def test_evaluated_like_a_model(policy, small_model_dirs):
    ref = load_for_eval(small_model_dirs[1], "cpu")
    prompts = [EvalPrompt(p, {"family": "x" if i % 2 else "y"}) for i, p in enumerate(PROMPTS)]

    def scorer(prompt, response):
        return {"total": fraction_of_a(prompt.prompt, response), "empty": not response.strip()}

    options = EvalOptions(max_new_tokens=6, seed=3, primary="total")
    settings = {"ref": ref, "scorer": scorer, "options": options}
    result = evaluate_best_of_n(
        policy, prompts, callable_reward(fraction_of_a), 4,
        reward_fns={"chars": lambda prompt, response: float(len(response))}, **settings,
    )  # fmt: skip
    m = result.metrics
    assert m["kl"]["mean"] == pytest.approx(math.log(4) - 3 / 4)
    assert len(result.samples) == m["n_samples"] == 6 and m["settings"]["n"] == 4
    # the picked responses: scored by the scorer, the reward fns and the picking reward
    assert m["scores"]["total"]["mean"] == pytest.approx(m["rewards"]["best_of_n"]["mean"])
    assert m["best_of_n"]["picked_reward"]["mean"] >= m["best_of_n"]["all_reward"]["mean"]
    assert set(m["scores_by_family"]) == {"x", "y"}
    assert m["win_rate"]["by"] == "scores.total" and len(result.ref_samples) == 6
    base = evaluate_model(policy, prompts, **settings)
    assert m["scores"]["total"]["mean"] >= base.metrics["scores"]["total"]["mean"]
    table = markdown_table({"base": base, "best-of-4": result})
    assert "KL to ref" in table and "best-of-4" in table


def test_cli_writes_the_picked_responses(small_model_dirs, tmp_path):
    reward_file = tmp_path / "reward.py"
    reward_file.write_text(
        "def contains(prompt, response, target='a'):\n"
        "    return float(target in response.split())\n"
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "target": "a"}) + "\n" for p in PROMPTS))
    out = tmp_path / "picked.jsonl"
    args = [
        f"model.path={small_model_dirs[0]}", f"data.path={prompts}",
        f"reward={reward_file}:contains", "n=4", f"output={out}", "max_new_tokens=6",
        f"gold={reward_file}:contains",
    ]  # fmt: skip
    assert main(["bon", *args]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == PROMPTS
    assert [row["prompt_index"] for row in rows] == list(range(6))
    for row in rows:
        assert row["reward"] == row["gold"] == float("a" in row["completion"].split())
    # the same picks as the Python function with the same settings
    policy = load_for_eval(small_model_dirs[0], "cpu")
    reward = callable_reward(lambda prompt, response: float("a" in response.split()))
    samples, picked = best_of_n(
        policy.model, policy.tokenizer, PROMPTS, reward, 4, max_new_tokens=6, seed=0
    )
    assert [row["completion"] for row in rows] == [samples.texts[j] for j in picked]
    assert main(["bon", *args, "reward="]) == 2  # reward is required: a config error
