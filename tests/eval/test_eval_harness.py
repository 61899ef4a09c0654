"""evaluate(): metrics, scorer and reward hooks, families, a model against itself."""

import dataclasses
import json
import shutil

import pytest

from alignlab.eval.harness import EvalOptions, EvalPrompt, evaluate, evaluate_many

PROMPTS = [
    EvalPrompt("What is 1 plus 2?", {"family": "math"}),
    EvalPrompt([{"role": "user", "content": "What is 3 plus 4?"}], {"family": "math"}),
    EvalPrompt("alpha beta", {"family": "chat"}),
    EvalPrompt([{"role": "user", "content": "the capital of delta"}], {"family": "chat"}),
    EvalPrompt("sorry cannot help", {}),
]


def gold(prompt, response):
    words = response.split()
    return {
        "total": float(len(response) % 7),
        "helpful": len(words) / 4,
        "refused": "sorry" in response,
        "long": len(words) > 3,
        "family_seen": prompt.meta.get("family") == "math",
    }


REWARDS = {"chars": lambda prompt, response: float(len(response))}


@pytest.fixture(scope="module")
def ref_copy(tiny_model_dir, tmp_path_factory):
    """The tiny model in a second folder, so the reference is a separate load."""
    target = tmp_path_factory.mktemp("ref") / "tiny-copy"
    shutil.copytree(tiny_model_dir, target)
    return target


def test_metrics_without_reference(tiny_model_dir):
    result = evaluate(
        tiny_model_dir,
        PROMPTS,
        scorer=gold,
        reward_fns=REWARDS,
        options=EvalOptions(num_samples=3, max_new_tokens=6, seed=1),
    )
    m = result.metrics
    assert (m["n_prompts"], m["num_samples"], m["n_samples"]) == (5, 3, 15)
    assert len(result.samples) == 15 and not result.ref_samples
    assert [(s.prompt_index, s.sample_index) for s in result.samples[:4]] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
    ]
    lengths = [len(s.generation.response_ids) for s in result.samples]
    assert m["length"]["mean"] == pytest.approx(sum(lengths) / 15)
    assert m["length"]["lower"] <= m["length"]["mean"] <= m["length"]["upper"]
    assert m["finished"]["method"] == "wilson"
    assert 0 <= m["distinct_1"] <= 1 and 0 <= m["distinct_2"] <= 1
    # numeric scorer keys are means (t), boolean ones rates (Wilson)
    assert m["scores"]["total"]["method"] == "t" and m["scores"]["refused"]["method"] == "wilson"
    assert m["scores"]["total"]["mean"] == pytest.approx(
        sum(s.scores["total"] for s in result.samples) / 15
    )
    assert m["rewards"]["chars"]["mean"] == pytest.approx(
        sum(len(s.generation.text) for s in result.samples) / 15
    )
    # per family: the prompt without a family is in no group
    by_family = m["scores_by_family"]
    assert set(by_family) == {"chat", "math"}
    assert by_family["math"]["family_seen"]["mean"] == 1.0
    assert by_family["chat"]["family_seen"]["mean"] == 0.0
    assert by_family["math"]["total"]["n"] == 6
    assert "kl" not in m and "win_rate" not in m
    data = json.loads(result.to_json())
    assert data["metrics"]["scores"]["helpful"]["n"] == 15
    assert len(data["samples"]) == 15


def test_model_against_itself_same_seed(tiny_model_dir, ref_copy):
    """Same weights and, by default, the same per-prompt seeds: the reference samples are the
    model's; every pair ties and each sample's two log-probs are the same computation, so KL
    is 0 exactly."""
    result = evaluate(
        tiny_model_dir,
        PROMPTS,
        ref_dir=ref_copy,
        scorer=gold,
        options=EvalOptions(num_samples=2, max_new_tokens=6, seed=3),
    )
    assert result.metrics["settings"]["ref_seed"] == 3
    assert all(s.kl == 0.0 for s in result.samples)
    assert result.metrics["kl"]["mean"] == 0.0 and result.metrics["kl"]["se"] == 0.0
    assert [s.generation.response_ids for s in result.ref_samples] == [
        s.generation.response_ids for s in result.samples
    ]
    win = result.metrics["win_rate"]
    assert win["by"] == "scores.total"
    assert win["mean"] == 0.5 and win["ties"] == 10 and win["wins"] == win["losses"] == 0
    paired = result.metrics["paired"]
    assert (paired["by"], paired["same_seeds"]) == ("scores.total", True)
    assert paired["difference"]["mean"] == 0.0 and paired["difference"]["upper"] == 0.0
    assert not paired["separated"] and paired["win_rate"]["ties"] == 5  # per prompt
    assert set(paired["by_family"]) == {"chat", "math"}
    assert result.metrics["reference"]["scores"]["total"] == result.metrics["scores"]["total"]


def test_model_against_itself_independent_seed(tiny_model_dir, ref_copy):
    """The reference sampled with another seed: the win rate is 0.5 only in expectation (its
    interval covers it), the KL is still exactly 0 per sample."""
    result = evaluate(
        tiny_model_dir,
        PROMPTS,
        ref_dir=ref_copy,
        reward_fns=REWARDS,
        options=EvalOptions(num_samples=4, max_new_tokens=6, seed=3, ref_seed=4),
    )
    assert all(s.kl == 0.0 for s in result.samples)
    assert result.metrics["kl"]["exact_sampling"] is True
    assert [s.generation.text for s in result.ref_samples] != [
        s.generation.text for s in result.samples
    ]
    win = result.metrics["win_rate"]
    assert win["by"] == "rewards.chars"
    assert win["lower"] <= 0.5 <= win["upper"]
    assert win["wins"] + win["ties"] + win["losses"] == 20


def test_evaluate_many_shares_the_reference(tiny_model_dir, ref_copy, small_model_dirs, tmp_path):
    results = evaluate_many(
        {"same": tiny_model_dir, "copy": ref_copy},
        PROMPTS[:3],
        ref_dir=tiny_model_dir,
        scorer=gold,
        options=EvalOptions(max_new_tokens=5, seed=0),
    )
    assert list(results) == ["same", "copy"]
    assert results["same"].metrics["name"] == "same"
    # the reference is sampled and scored once
    assert results["same"].ref_samples is results["copy"].ref_samples
    assert results["copy"].metrics["kl"]["mean"] == 0.0
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate(
            small_model_dirs[0],
            PROMPTS[:1],
            ref_dir=tiny_model_dir,
            options=EvalOptions(max_new_tokens=2),
        )


@pytest.mark.parametrize("reference_first", [True, False])
def test_the_reference_as_a_model_is_sampled_once(
    tiny_model_dir, ref_copy, monkeypatch, reference_first
):
    """The reference among the models (same folder, same seed): its samples as a model are the
    reference's, so the harness draws them once, whether it comes before or after the others."""
    import alignlab.eval.harness as harness

    real_sample = harness._sample
    draws = []

    def counting_sample(loaded, prompts, sampling, seed):
        draws.append(loaded.name)
        return real_sample(loaded, prompts, sampling, seed)

    monkeypatch.setattr(harness, "_sample", counting_sample)
    models = {"ref": tiny_model_dir, "other": ref_copy}
    if not reference_first:
        models = dict(reversed(models.items()))
    results = evaluate_many(
        models,
        PROMPTS[:4],
        ref_dir=tiny_model_dir,
        scorer=gold,
        options=EvalOptions(max_new_tokens=5, seed=2),
    )
    assert len(draws) == 2  # the other model's samples and the reference's, once each
    own, ref_samples = results["ref"].samples, results["ref"].ref_samples
    assert [s.generation.response_ids for s in own] == [
        s.generation.response_ids for s in ref_samples
    ]
    assert all(s.kl == 0.0 for s in own) and all(s.logp is None for s in ref_samples)
    paired = results["ref"].metrics["paired"]
    assert paired["difference"]["mean"] == 0.0 and paired["win_rate"]["ties"] == 4
    # another eval seed for the reference: its samples as a model are then a draw of their own
    draws.clear()
    evaluate_many({"ref": tiny_model_dir}, PROMPTS[:4], ref_dir=tiny_model_dir, scorer=gold, options=EvalOptions(max_new_tokens=5, seed=2, ref_seed=3))  # fmt: skip
    assert len(draws) == 2


def test_tempered_sampling_warns_about_kl(tiny_model_dir):
    with pytest.warns(UserWarning, match="temperature"):
        result = evaluate(
            tiny_model_dir,
            PROMPTS[:2],
            ref_dir=tiny_model_dir,
            options=EvalOptions(max_new_tokens=3, temperature=0.7),
        )
    assert result.metrics["kl"]["exact_sampling"] is False


def test_reference_scores_responses_after_its_own_rendering_of_the_prompt(tiny_model_dir, tmp_path):
    """Same weights, but the evaluated copy's chat template adds a feedback phrase (as a
    Chain-of-Hindsight model's does): on chat prompts the reference log-probs are of the
    response after the reference's rendering, so they differ from the policy's; on plain
    strings (no template) nothing changes."""
    from transformers import AutoTokenizer

    from alignlab.data.hindsight import hindsight_chat_template
    from alignlab.data.templates import render_prompt
    from alignlab.eval.harness import load_for_eval
    from alignlab.models.generation import prompt_token_ids
    from alignlab.models.logprobs import sequence_logps

    conditioned = tmp_path / "conditioned"
    shutil.copytree(tiny_model_dir, conditioned)
    tokenizer = AutoTokenizer.from_pretrained(conditioned)
    tokenizer.chat_template = hindsight_chat_template(tokenizer.chat_template)
    tokenizer.save_pretrained(conditioned)
    result = evaluate(
        conditioned, PROMPTS, ref_dir=tiny_model_dir, options=EvalOptions(max_new_tokens=6, seed=3)
    )
    ref = load_for_eval(tiny_model_dir, device="cpu")
    for sample in result.samples:
        prompt = PROMPTS[sample.prompt_index].prompt
        generation = sample.generation
        ids = prompt_token_ids(ref.tokenizer, render_prompt(ref.tokenizer, prompt))
        assert ("helpful answer" in generation.prompt_text) == isinstance(prompt, list)
        by_hand = dataclasses.replace(generation, prompt_ids=ids)
        expected = sequence_logps(ref.model, ref.tokenizer, [by_hand])[0].item()
        assert sample.ref_logp == pytest.approx(expected, abs=1e-5)
        if isinstance(prompt, str):
            assert sample.ref_logp == pytest.approx(sample.logp, abs=1e-5)
        else:
            assert sample.ref_logp != pytest.approx(sample.logp, abs=1e-4)  # fp32 noise ~1e-5


def test_sampling_seeds_are_per_prompt_not_per_model_or_batch(small_model_dirs, monkeypatch):
    """The random numbers each prompt is sampled with (decode's uniforms, recorded) are the
    same for two different models, whatever the batch size or the order of the prompts: a
    function of the prompt, the sample index and the eval seed only."""
    import alignlab.models.generation as generation

    real_decode = generation.decode
    seen: dict[tuple[int, ...], list] = {}

    def recording_decode(model, input_ids, attention_mask, *args, **kwargs):
        uniforms = args[-1]
        for row in range(input_ids.shape[0]):
            ids = tuple(input_ids[row][attention_mask[row].bool()].tolist())
            seen.setdefault(ids, []).append(uniforms[row].tolist())
        return real_decode(model, input_ids, attention_mask, *args, **kwargs)

    monkeypatch.setattr(generation, "decode", recording_decode)
    prompts = [EvalPrompt(text) for text in ("a b", "c", "a", "b c a", "a b")]

    def draws(model_dir, order, batch_size, seed=5):
        seen.clear()
        evaluate_many({"m": model_dir}, [prompts[i] for i in order], options=EvalOptions(num_samples=2, max_new_tokens=4, batch_size=batch_size, seed=seed))  # fmt: skip
        return {ids: sorted(rows) for ids, rows in seen.items()}

    policy, other = small_model_dirs
    first = draws(policy, range(5), batch_size=3)
    # four distinct prompts, "a b" twice: 2 samples each, the repeat's four draws all distinct
    assert sorted(len(rows) for rows in first.values()) == [2, 2, 2, 4]
    assert all(len({tuple(r) for r in rows}) == len(rows) for rows in first.values())
    assert draws(other, range(5), batch_size=3) == first
    assert draws(other, [4, 3, 2, 1, 0], batch_size=1) == first
    assert draws(other, range(5), batch_size=3, seed=6) != first


def test_sampling_seeds_function_of_prompt_sample_and_seed():
    from alignlab.eval.harness import sampling_seeds

    prompts = ["x", [{"role": "user", "content": "y"}], "x"]
    seeds = sampling_seeds(prompts, 2, seed=0)
    assert len(set(seeds)) == 6 and all(0 <= s < 2**63 for s in seeds)
    assert sampling_seeds(prompts[1:2], 2, seed=0) == seeds[2:4]  # a prompt's seeds, anywhere
    assert sampling_seeds(prompts[:1], 2, seed=0) == seeds[:2]
    assert sampling_seeds(prompts, 2, seed=1)[:2] != seeds[:2]


def test_paired_comparison_with_the_reference_by_hand(small_model_dirs):
    """Two different models: metrics["paired"] is the mean over prompts of (the model's mean
    score over the prompt's samples - the reference's), with the t interval of those
    per-prompt differences."""
    import math

    policy, ref = small_model_dirs
    prompts = [EvalPrompt(t, {"family": f}) for t, f in [("a", "x"), ("b", "x"), ("c a", "y")]]
    prompts += [EvalPrompt("b c", {"family": "y"}), EvalPrompt("a a b", {})]
    result = evaluate(
        policy,
        prompts,
        ref_dir=ref,
        reward_fns=REWARDS,
        options=EvalOptions(num_samples=3, max_new_tokens=4),
    )
    paired = result.metrics["paired"]
    assert (paired["by"], paired["same_seeds"]) == ("rewards.chars", True)

    def means(samples):
        sums = [0.0] * 5
        for s in samples:
            sums[s.prompt_index] += len(s.generation.text) / 3
        return sums

    d = [a - b for a, b in zip(means(result.samples), means(result.ref_samples))]
    mean = sum(d) / 5
    assert paired["difference"]["mean"] == pytest.approx(mean)
    s = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    assert s > 0  # two different models: the responses differ
    half = 2.7764451 * s / math.sqrt(5)  # t_{0.975, 4}
    assert paired["difference"]["lower"] == pytest.approx(mean - half, abs=1e-6)
    assert paired["difference"]["upper"] == pytest.approx(mean + half, abs=1e-6)
    assert paired["difference"]["n"] == 5 and paired["win_rate"]["n"] == 5
    assert paired["model_mean"]["mean"] == pytest.approx(result.metrics["rewards"]["chars"]["mean"])
    assert (
        set(paired["by_family"]) == {"x", "y"} and paired["by_family"]["x"]["difference"]["n"] == 2
    )


def test_the_ranking_score_is_the_callers_choice():
    """The harness knows no score by name: `EvalOptions.primary` picks it, else the first
    reward fn, else the scorer's first numeric key; an unknown name is an error naming both."""
    from alignlab.eval.harness import EvalSample, _win_key
    from alignlab.models.generation import Generation

    sample = EvalSample(0, 0, Generation("p", [1], [2], "r", True))
    sample.scores = {"refused": True, "total": 0.5, "helpful": 0.2}
    assert _win_key([sample]) == ("scores", "total")  # the first numeric key, not a bool
    assert _win_key([sample], "helpful") == ("scores", "helpful")
    sample.rewards = {"rm": 1.0}
    assert _win_key([sample]) == ("rewards", "rm")
    assert _win_key([sample], "total") == ("scores", "total")
    with pytest.raises(ValueError, match="'gold'.*'total', 'helpful', 'rm'"):
        _win_key([sample], "gold")
