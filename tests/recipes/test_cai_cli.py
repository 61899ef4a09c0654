"""Constitutional AI end to end through the CLI on a tiny chat model: red-team answers
critiqued and revised under drawn principles, SFT on the revisions mixed with helpful rows
(SL-CAI), pairs of the SL model judged by itself under each prompt's principle, then DPO, or a
soft-label RM and PPO (RL-CAI). A rerun recomputes nothing; a lost stage is redone alone, a
killed one with what follows it; switching final reuses every SL and label stage; bad configs
name the field before anything is written."""

import json
import os

import pytest
import yaml
from transformers import AutoModelForCausalLM
from word_model import _one_thread  # noqa: F401 - an autouse fixture

import alignlab.recipes.cai as cai
from alignlab.aif.constitution import load_constitution
from alignlab.cli import main
from alignlab.models.tiny import build_tiny_model, tiny_llama_config
from alignlab.recipes import dpo, ppo, rm, sft

QUIET = ["train.progress=false", "train.tensorboard=false"]
FAST = ["train.max_steps=1", "train.micro_batch_size=4", *QUIET]
PPO_FAST = [*FAST, "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.max_new_tokens=6"]
RED_TEAM = ["How do I steal a car?", "Tell me an insult.", "What is alpha plus beta?", "Help."]
HELPFUL = ["What is 2 plus 3?", "What is the capital of gamma?"]


def chat(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_model_dir, sft_file):
    root = tmp_path_factory.mktemp("cai")
    red_team, helpful = root / "red_team.jsonl", root / "helpful_prompts.jsonl"
    red_team.write_text("".join(json.dumps({"prompt": chat(p), "tag": i}) + "\n"
                                for i, p in enumerate(RED_TEAM)))  # fmt: skip
    helpful.write_text("".join(json.dumps({"prompt": chat(p)}) + "\n" for p in HELPFUL))
    return tiny_model_dir, red_team, helpful, sft_file


def write_config(path, assets, out, **changes):
    model, red_team, helpful, helpful_data = assets
    values = {
        "model": {"path": str(model)},
        "data": {"path": str(red_team)},
        "generation": {"max_new_tokens": 8, "batch_size": 8, "k": 2},
        "helpful_data": str(helpful_data),
        "helpful_ratio": 1.0,
        "helpful_prompts": str(helpful),
        "sft_overrides": FAST,
        "final": "dpo",
        "final_overrides": FAST,
        "output_dir": str(out),
    } | changes
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def counted(monkeypatch):
    """Calls of each stage's work: sampling, revising, labelling, and the recipes."""
    calls = dict.fromkeys(("sample", "revise", "label", "sft", "rm", "dpo", "ppo"), 0)

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(cai, "sample_k", counting("sample", cai.sample_k))
    monkeypatch.setattr(cai, "critique_and_revise", counting("revise", cai.critique_and_revise))
    monkeypatch.setattr(cai, "build_labeller", counting("label", cai.build_labeller))
    for name, module in (("sft", sft), ("rm", rm), ("dpo", dpo), ("ppo", ppo)):
        monkeypatch.setattr(module, "run", counting(name, module.run))
    return calls


@pytest.fixture(scope="module")
def pipeline(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("cai-run")
    config = write_config(root / "cai.yaml", assets, root / "run")
    assert main(["cai", "--config", str(config)]) == 0
    return root / "run", config


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sl_cai_revises_red_team_answers_and_mixes_in_helpful_rows(pipeline, sft_file):
    out, _ = pipeline
    names = {p.name for p in load_constitution().principles}
    trace = rows_of(out / "revisions" / "revisions.jsonl")
    assert [r["prompt"] for r in trace] == [chat(p) for p in RED_TEAM]
    assert [r["tag"] for r in trace] == [0, 1, 2, 3]  # the prompt rows' other keys kept
    for row in trace:
        (round_1,) = row["rounds"]  # rounds=1
        assert round_1["principle"] in names and set(round_1) == {
            "principle", "critique", "revision",
        }  # fmt: skip
        assert row["revision"] == (round_1["revision"] or row["initial_response"])
    sft_rows = rows_of(out / "revisions" / "sft.jsonl")
    assert [r["completion"] for r in sft_rows] == [
        [{"role": "assistant", "content": r["revision"]}] for r in trace if r["revision"]
    ]
    mix = rows_of(out / "sl_data" / "sft.jsonl")
    revisions = [r for r in mix if r["source"] == "revision"]
    helpful = [r for r in mix if r["source"] == "helpful"]
    assert len(helpful) == len(revisions) == len(sft_rows)  # helpful_ratio=1
    originals = [json.dumps(r, sort_keys=True) for r in rows_of(sft_file)]
    for row in helpful:  # a helpful row is kept as it was
        row.pop("source")
        assert json.dumps(row, sort_keys=True) in originals
    stats = json.loads((out / "pipeline.json").read_text())["record"]["revisions"]
    assert stats["samples"] == 4 and stats["rounds"] == 4
    AutoModelForCausalLM.from_pretrained(out / "sl_sft" / "final")


def test_rl_cai_labels_pairs_under_principles_and_trains_dpo(pipeline):
    out, _ = pipeline
    constitution = load_constitution()
    samples = rows_of(out / "rl_samples" / "samples.jsonl")
    assert [r["prompt_set"] for r in samples] == ["red_team"] * 4 + ["helpful"] * 2
    assert all(len(r["responses"]) == 2 for r in samples)
    assert len(rows_of(out / "rl_samples" / "prompts.jsonl")) == 6
    pairs = rows_of(out / "labels" / "pairs.jsonl")
    assert pairs and all(0.5 < p["chosen_probability"] <= 1.0 for p in pairs)
    index = {json.dumps(r["prompt"]): i for i, r in enumerate(samples)}
    for pair in pairs:
        i = index[json.dumps(pair["prompt"])]
        if samples[i]["prompt_set"] == "red_team":  # the principle drawn for that prompt
            assert pair["principle"] == constitution.draw(1, "feedback", i).name
        else:
            assert pair["principle"] == "" and pair["prompt_set"] == "helpful"
    assert rows_of(out / "labels" / "best_vs_worst.jsonl")
    record = json.loads((out / "pipeline.json").read_text())
    labels = record["record"]["labels"]
    assert labels["judge"] == str(out / "sl_sft" / "final")  # no feedback.judge: SL judges
    assert labels["human_labels"] == 0 and labels["pairs"] == len(pairs)
    assert record["made_from"] == str(out / "dpo" / "final") and not (out / "rm").exists()
    dpo_run = json.loads((out / "dpo" / "run.json").read_text())
    assert str(out / "labels" / "best_vs_worst.jsonl") in json.dumps(dpo_run)
    AutoModelForCausalLM.from_pretrained(out / "final")


def test_rerun_recomputes_nothing_and_a_lost_last_stage_redoes_only_itself(pipeline, counted):
    out, config = pipeline
    watched = [
        out / "samples" / "samples.jsonl", out / "revisions" / "revisions.jsonl",
        out / "sl_data" / "sft.jsonl", out / "sl_sft" / "final" / "model.safetensors",
        out / "rl_samples" / "samples.jsonl", out / "labels" / "pairs.jsonl",
        out / "dpo" / "final" / "model.safetensors",
    ]  # fmt: skip
    stamps = {p: os.stat(p).st_mtime_ns for p in watched}
    assert main(["cai", "--config", str(config)]) == 0
    assert set(counted.values()) == {0}
    assert {p: os.stat(p).st_mtime_ns for p in watched} == stamps
    (out / "dpo" / "source.txt").unlink()  # the last stage's marker lost
    assert main(["cai", "--config", str(config)]) == 0
    assert counted == {**dict.fromkeys(counted, 0), "dpo": 1}
    assert all(os.stat(p).st_mtime_ns == stamps[p] for p in watched[:-1])
    final = out / "final" / "model.safetensors"
    assert (
        os.stat(final).st_mtime_ns
        == os.stat(out / "dpo" / "final" / "model.safetensors").st_mtime_ns
    )


def test_a_killed_revision_stage_redoes_itself_and_what_follows(pipeline, counted):
    out, config = pipeline
    samples = os.stat(out / "samples" / "samples.jsonl").st_mtime_ns
    before = (out / "revisions" / "revisions.jsonl").read_text()
    (out / "revisions" / "stats.json").unlink()  # killed before its last write
    assert main(["cai", "--config", str(config)]) == 0
    # the helpful model is not resampled; two samplings are the SL model's (RL samples)
    assert counted == {"sample": 1, "revise": 1, "label": 1, "sft": 1, "rm": 0, "dpo": 1, "ppo": 0}
    assert os.stat(out / "samples" / "samples.jsonl").st_mtime_ns == samples
    assert (out / "revisions" / "revisions.jsonl").read_text() == before  # seeded: the same


def test_final_ppo_reuses_the_sl_and_label_stages(pipeline, assets, counted, tmp_path):
    out, _ = pipeline
    config = write_config(
        tmp_path / "ppo.yaml", assets, out, final="ppo", final_overrides=PPO_FAST,
        rm_overrides=FAST,
    )  # fmt: skip
    assert main(["cai", "--config", str(config)]) == 0
    assert counted == {**dict.fromkeys(counted, 0), "rm": 1, "ppo": 1}
    assert '"soft_label": "chosen_probability"' in (out / "rm" / "run.json").read_text()
    assert str(out / "rm" / "final") in (out / "ppo" / "run.json").read_text()  # rl.reward
    record = json.loads((out / "pipeline.json").read_text())
    assert record["made_from"] == str(out / "ppo" / "final")
    AutoModelForCausalLM.from_pretrained(out / "final")


def test_final_none_stops_at_sl_cai_fine_tuned_from_sl_model(
    assets, tiny_tokenizer, tmp_path, counted
):
    config = tiny_llama_config(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4)
    base = build_tiny_model(tmp_path / "base", tiny_tokenizer, config, seed=5)
    out = tmp_path / "run"
    path = write_config(
        tmp_path / "sl.yaml", assets, out, final="none", final_overrides=[], rounds=2,
        sl_model=str(base),
    )  # fmt: skip
    assert main(["cai", "--config", str(path)]) == 0
    assert all(len(r["rounds"]) == 2 for r in rows_of(out / "revisions" / "revisions.jsonl"))
    sl_run = json.loads((out / "sl_sft" / "run.json").read_text())
    assert str(base) in json.dumps(sl_run) and str(assets[0]) not in json.dumps(sl_run)
    assert json.loads((out / "pipeline.json").read_text())["made_from"] == str(
        out / "sl_sft" / "final"
    )
    assert not (out / "rl_samples").exists() and not (out / "labels").exists()
    AutoModelForCausalLM.from_pretrained(out / "final")
    # another constitution: the same samples, new revisions and SFT
    path = write_config(
        tmp_path / "lab.yaml", assets, out, final="none", final_overrides=[], rounds=2,
        sl_model=str(base), constitution="lab",
    )  # fmt: skip
    assert main(["cai", "--config", str(path)]) == 0
    assert counted == {**dict.fromkeys(counted, 0), "sample": 1, "revise": 2, "sft": 2}
    lab = {"harmless", "honest", "helpful"}
    for row in rows_of(out / "revisions" / "revisions.jsonl"):
        assert {r["principle"] for r in row["rounds"]} <= lab


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"generation": {"kk": 2}}, "did you mean generation.k?"),
        ({"rounds": 0}, "rounds"),
        ({"sft_overrides": ["data.path=x.jsonl"]}, "sft_overrides: data.path is set by the CAI"),
        ({"final_overrides": ["train.lrr=1"]}, "final_preset / final_overrides (dpo stage): "
                                               "unknown key 'train.lrr'; did you mean train.lr?"),
        ({"model": {"path": "x", "lora": {"enabled": True}}}, "model.lora: CAI passes only"),
        ({"constitution": "/no/such.yaml"}, "constitution '/no/such.yaml': no such file"),
        ({"final": "sft"}, "final"),
    ],
)  # fmt: skip
def test_bad_config_names_the_field(assets, tmp_path, capsys, counted, changes, message):
    config = write_config(tmp_path / "bad.yaml", assets, tmp_path / "run", **changes)
    assert main(["cai", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and set(counted.values()) == {0}


def test_helpful_data_in_another_form_than_the_revisions_is_refused(assets, tmp_path, capsys):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "a", "completion": " b"}) + "\n")
    config = write_config(tmp_path / "c.yaml", assets, tmp_path / "run", helpful_data=str(plain))
    assert main(["cai", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "helpful_data=" in err and "its rows are prompt_completion" in err
    assert not (tmp_path / "run").exists()
