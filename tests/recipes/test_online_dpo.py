"""Iterative (online) DPO from the command line on a tiny model: each round samples the
previous round's policy on its own prompt slice, a `file.py:function` reward labels, DPO
trains from that policy; `rounds=1` then `rounds=2` reuses round 1; bad options are one line."""

import json
import os
import random

import pytest
from transformers import AutoModelForCausalLM
from word_model import _one_thread, build_word_model  # noqa: F401 - a fixture

import alignlab.recipes.dpo as dpo_recipe
import alignlab.recipes.rounds as rounds
from alignlab.cli import main

PROMPTS = ["a b", "b c", "c a b", "b", "a", "c c"]
REWARD_PY = """
def length(prompt, response):
    return float(len(response))
"""
QUIET = ["train.progress=false", "train.tensorboard=false", "train.max_steps=1"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("online-dpo")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p, "row": i}) + "\n" for i, p in enumerate(PROMPTS))
    )
    reward = root / "reward.py"
    reward.write_text(REWARD_PY)
    return build_word_model(root / "policy"), prompts, f"{reward}:length"


def args(assets, out, *extra):
    policy, prompts, reward = assets
    return [
        "online_dpo", f"model.path={policy}", f"data.path={prompts}", f"output_dir={out}",
        f"labeller.reward={reward}", f"labeller.gold={reward}", "prompts_per_round=3", "k=4",
        "max_new_tokens=4", f"dpo_overrides={json.dumps(QUIET)}", *extra,
    ]  # fmt: skip


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def stamps(folder):
    return {p: os.stat(p).st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def calls(monkeypatch):
    """The folders each round sampled from, and the DPO runs made."""
    seen = {"sampled": [], "dpo": 0}
    load, train = rounds.load_for_eval, dpo_recipe.run

    def recording_load(path, *a, **kw):
        seen["sampled"].append(str(path))
        return load(path, *a, **kw)

    def counting_train(cfg):
        seen["dpo"] += 1
        return train(cfg)

    monkeypatch.setattr(rounds, "load_for_eval", recording_load)
    monkeypatch.setattr(dpo_recipe, "run", counting_train)
    return seen


def test_rounds_chain_the_policy_and_resume(assets, tmp_path, calls):
    policy, _, _ = assets
    out = tmp_path / "run"
    assert main(args(assets, out, "rounds=1")) == 0
    assert calls == {"sampled": [str(policy)], "dpo": 1}
    round_1 = stamps(out / "round_1")

    assert main(args(assets, out, "rounds=2")) == 0  # round 1 is reused, not redone
    assert stamps(out / "round_1") == round_1
    first_final = str(out / "round_1" / "dpo" / "final")
    assert calls == {"sampled": [str(policy), first_final], "dpo": 2}

    # round 2 sampled round 1's policy, on the next prompt slice, and trained from it
    summary = read_jsonl(out / "rounds.jsonl")
    assert [s["round"] for s in summary] == [1, 2]
    assert summary[0]["policy"] == str(policy) and summary[1]["policy"] == first_final
    samples = read_jsonl(out / "round_2" / "samples" / "samples.jsonl")
    assert [s["prompt"] for s in samples] == PROMPTS[3:6] and all(
        len(s["responses"]) == 4 for s in samples
    )
    record = json.loads((out / "round_2" / "dpo" / "run.json").read_text())["config"]
    assert record["model"]["path"] == first_final
    assert record["reference"]["path"] == str(policy)  # reference=initial: π_0 in every round

    # the reward labelled: each pair's chosen has more "a" than its rejected, stats say so
    for r in (1, 2):
        pairs = read_jsonl(out / f"round_{r}" / "pairs" / "pairs.jsonl")
        assert pairs and len(pairs) == summary[r - 1]["pairs_kept"] <= 3
        for pair in pairs:
            assert len(pair["chosen"]) > len(pair["rejected"])
            assert 0.5 < pair["chosen_probability"] <= 1.0
        stats = summary[r - 1]
        assert stats["mean_chosen_reward"] > stats["mean_rejected_reward"]
        assert stats["gold_mean"] >= 0  # the gold function (here the reward itself) is logged
        assert 0 <= stats["gold_agreement"]["all"]["agreement"] <= 1

    # output_dir/final is round 2's model, a plain folder
    final = out / "final"
    assert not final.is_symlink()
    assert (final / "model.safetensors").read_bytes() == (
        out / "round_2" / "dpo" / "final" / "model.safetensors"
    ).read_bytes()
    AutoModelForCausalLM.from_pretrained(final)

    everything = stamps(out)
    assert main(args(assets, out, "rounds=2")) == 0  # all cached
    assert stamps(out) == everything and calls["dpo"] == 2

    # a round-2 DPO stage lost (killed) is redone alone: its samples and pairs stay
    (out / "round_2" / "dpo" / "source.txt").unlink()
    assert main(args(assets, out, "rounds=2")) == 0
    assert calls["dpo"] == 3 and len(calls["sampled"]) == 2
    after = stamps(out)
    for path in (
        out / "round_2" / "samples" / "samples.jsonl",
        out / "round_2" / "pairs" / "pairs.jsonl",
    ):
        assert after[path] == everything[path]


def test_previous_reference_and_all_pairs(assets, tmp_path):
    out = tmp_path / "previous"
    assert main(args(assets, out, "rounds=2", "reference=previous", "pairs=all", "k=3")) == 0
    record = json.loads((out / "round_2" / "dpo" / "run.json").read_text())["config"]
    assert record["reference"]["path"] == ""  # = model.path: the previous round's policy
    pairs = read_jsonl(out / "round_1" / "pairs" / "pairs.jsonl")
    # every pair the reward separates: up to 3 per prompt of 3 distinct samples
    samples = read_jsonl(out / "round_1" / "samples" / "samples.jsonl")
    separated = 0
    for s in samples:
        counts = [len(t) for t in dict.fromkeys(s["responses"]) if t.strip()]
        separated += sum(a != b for i, a in enumerate(counts) for b in counts[i + 1 :])
    assert len(pairs) == separated


@pytest.mark.parametrize(
    "extra, message",
    [
        (["k=1"], "k: 1 is out of range"),
        (["dpo_preset=no_such_preset"], "dpo_preset"),
        (["pairs=some"], "pairs"),
        (['dpo_overrides=["model.path=other"]'], "dpo_overrides: model.path is set by each round"),
        (['dpo_overrides=["loss=nope"]'], "dpo_overrides"),
        (
            ['dpo_overrides=["reference.mode=adapter", "model.lora.enabled=true"]'],
            "reference=previous",
        ),
        (["labeller.reward="], "reward is required"),
    ],
)
def test_bad_options_are_one_config_line(assets, tmp_path, capsys, extra, message, calls):
    code = main([*args(assets, tmp_path / "bad"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert "config error" in err and message in err
    assert calls == {"sampled": [], "dpo": 0}  # refused before any model loads


def test_the_lab_annotator_reward_is_bradley_terry_on_gold(monkeypatch):
    from alignlab.lab import rewards

    gold = {"good": rewards.ANNOTATOR_TEMPERATURE, "bad": 0.0}
    monkeypatch.setattr(
        rewards, "gold_reward", lambda prompt, response, **_: gold[response.split()[0]]
    )
    prompts = [f"q{i} {random.Random(i).random()}" for i in range(4000)]
    wins = [
        rewards.annotator_reward(p, "good answer") > rewards.annotator_reward(p, "bad answer")
        for p in prompts
    ]
    # gold margin of one temperature: P(good ranked first) = σ(1) = 0.731
    assert sum(wins) / len(wins) == pytest.approx(0.731, abs=0.03)
    assert rewards.annotator_reward("q", "good one") == rewards.annotator_reward("q", "good one")
