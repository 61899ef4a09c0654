"""The lab pipeline at toy size: build (and its cache), export CLI, gold evaluation, report."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from alignlab.cli import main
from alignlab.eval.report import write_report
from alignlab.lab.build import LabBuildConfig, build
from alignlab.lab.evaluate import HEADLINE, LEFT_OUT_OF_HEADLINE, evaluate_lab

TOY = dict(
    vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, pretrain_epochs=0.05,
    micro_batch_size=8, max_length=128, n_sft=40, n_heldout=30, mixed_precision="no",
)  # fmt: skip


@pytest.fixture(scope="module")
def toy_lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    return build(LabBuildConfig(out=str(out), **TOY), progress=False)


def test_build_writes_plain_hf_base_and_datasets(toy_lab):
    AutoModelForCausalLM.from_pretrained(toy_lab.base)
    for name in ("sft", "preference", "prompts", "heldout_prompts", "pretrain"):
        assert toy_lab.data[name].exists(), name
    probe = toy_lab.manifest["base_probe"]
    assert set(probe) >= {"fact_accuracy", "unknown_hallucination", "harmful_compliance"}
    first = json.loads(toy_lab.data["sft"].read_text().splitlines()[0])
    assert first["messages"][-1]["role"] == "assistant"


def test_second_build_reuses_the_cache(toy_lab, capsys):
    before = (toy_lab.base / "model.safetensors").stat().st_mtime_ns
    again = build(LabBuildConfig(out=str(toy_lab.out), **TOY), progress=False)
    assert "cached" in capsys.readouterr().out
    assert (again.base / "model.safetensors").stat().st_mtime_ns == before
    # a different setting is a different build
    assert (
        LabBuildConfig(out=str(toy_lab.out), **{**TOY, "seed": 1}).key()
        != LabBuildConfig(**TOY).key()
    )


def test_export_cli_writes_trl_format_jsonl(tmp_path):
    assert (
        main(["lab", "export", "--out", str(tmp_path), "--n-train", "20", "--n-heldout", "10"]) == 0
    )
    pref = json.loads((tmp_path / "preference.jsonl").read_text().splitlines()[0])
    assert {"prompt", "chosen", "rejected"} <= set(pref)
    assert pref["prompt"][0]["role"] == "user" and pref["chosen"][0]["role"] == "assistant"
    assert len((tmp_path / "heldout_prompts.jsonl").read_text().splitlines()) == 10


def test_evaluate_lab_reports_gold_kl_and_oracle(toy_lab, tmp_path):
    results = evaluate_lab(
        toy_lab.world, {"base": toy_lab.base}, ref=toy_lab.base, n_prompts=24, max_new_tokens=8
    )
    oracle = results["oracle"].metrics
    assert oracle["scores"]["total"]["mean"] == pytest.approx(1.0)
    base = results["base"].metrics
    assert base["kl"]["mean"] == 0.0  # the base against itself
    assert base["scores"]["total"]["mean"] < 0.9  # an untrained toy is far from the oracle
    # the base against itself, same prompts and seeds: every prompt ties
    assert base["paired"]["difference"]["mean"] == 0.0 and not base["paired"]["separated"]
    # headline gold leaves out the families of LEFT_OUT_OF_HEADLINE, the per-family numbers not
    families = [p.family for p in toy_lab.world.prompts("heldout", 24)]
    kept = [f for f in families if f not in LEFT_OUT_OF_HEADLINE]
    assert 0 < len(kept) < 24  # the toy's prompts hold a left-out family (arithmetic)
    headline = base["headline"]
    assert headline["n_prompts"] == len(kept) and headline["scores"]["total"]["n"] == len(kept)
    assert set(headline["left_out"]) == set(families) - set(kept)
    assert base["paired"]["win_rate"]["ties"] == len(kept)
    assert set(base["paired"]["by_family"]) == set(families)
    assert base["paired"]["left_out"] == headline["left_out"]
    # the oracle against the base's samples: gold 1.0 everywhere, on the headline prompts
    gap = 1.0 - headline["scores"]["total"]["mean"]
    assert oracle["paired"]["difference"]["mean"] == pytest.approx(gap, abs=1e-9)
    assert oracle["headline"]["scores"]["total"]["mean"] == pytest.approx(1.0)
    paths = write_report(results, tmp_path, title="toy", table_keys=HEADLINE)
    table = paths["markdown"].read_text()
    assert "| oracle |" in table and "| base |" in table


def test_eval_cli_without_prompts_uses_lab_gold(toy_lab, tmp_path, capsys):
    args = [
        "eval",
        "--model",
        str(toy_lab.base),
        "--ref",
        str(toy_lab.base),
        "--out",
        str(tmp_path),
    ]
    assert main([*args, "--n-prompts", "12", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "| oracle |" in out and "gold" in out
    assert "Δ gold vs ref (paired t)" in out and "| separated |" in out
    assert (tmp_path / "report.html").exists()
    # several named models on the same valid prompts, in one table
    many = ["eval", "--model", f"a={toy_lab.base}", "--model", f"b={toy_lab.base}"]
    assert main([*many, "--split", "valid", "--out", str(tmp_path / "two"), "--n-prompts", "6",
                 "--max-new-tokens", "4"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "| a |" in out
        and "| b |" in out
        and "(valid)" in (tmp_path / "two" / "report.md").read_text()
    )
    assert main([*many[:3], "--model", f"a={toy_lab.base}"]) == 2
    assert "the name 'a' is taken" in capsys.readouterr().err


def test_demo_runs_every_stage_and_caches_them(toy_lab, tmp_path, capsys):
    from alignlab.lab.demo import run_demo

    short = ["train.max_steps=2", "train.progress=false", "train.tensorboard=false"]
    cfg = LabBuildConfig(out=str(toy_lab.out), **TOY)
    rl = ["rl.prompts_per_step=4", "rl.mini_batch_size=8", "rl.max_new_tokens=8"]
    stages = {"sft": short, "rm": short, "dpo": short, "ppo": [*short, *rl]}
    paths = run_demo(tmp_path, cfg, n_prompts=12, feedback_prompts=12, overrides=stages)
    table = paths["markdown"].read_text()
    assert all(f"| {name} |" in table for name in ("base", "sft", "dpo", "ppo", "oracle"))
    assert (tmp_path / "plots" / "ppo_curves.png").exists()
    for stage in ("sft", "dpo", "ppo"):
        AutoModelForCausalLM.from_pretrained(tmp_path / stage / "final")
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "final")
    assert json.loads((tmp_path / "feedback" / "stats.json").read_text())["comparisons"] > 0
    # every model paired with SFT: SFT against itself ties everywhere, at KL 0
    models = json.loads(paths["json"].read_text())["models"]
    assert models["sft"]["kl"]["mean"] == 0.0 and models["sft"]["paired"]["difference"]["mean"] == 0
    assert all(models[m]["paired"]["baseline"] == str(tmp_path / "sft" / "final") for m in models)
    # the report and the terminal open / end with the verdict on DPO, PPO and the base vs SFT
    lines = table.split("**Verdict**\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    for line, name in zip(lines, ("DPO", "PPO", "base"), strict=False):
        assert name in line and ("beats" in line) != line.endswith("not separated."), line
    assert len(lines) == 5 and "but arithmetic" in lines[3]  # the left-out family named
    assert "One training run per model (seed 0)" in lines[4]  # and what the intervals leave out
    out = capsys.readouterr().out
    verdict_lines = out.split("verdict (seed 0, paired with SFT):\n", 1)[1].splitlines()
    assert [line.strip() for line in verdict_lines[: len(lines)]] == [x[2:] for x in lines]
    run_demo(tmp_path, cfg, n_prompts=12, feedback_prompts=12, overrides=stages)
    assert capsys.readouterr().out.count("cached in") >= 6  # build, sft, feedback, rm, dpo, ppo


def test_demo_seed_changes_training_and_eval_seeds_not_the_build(toy_lab, tmp_path, capsys):
    from alignlab.lab.demo import run_demo

    short = ["train.max_steps=1", "train.progress=false", "train.tensorboard=false"]
    rl = ["rl.prompts_per_step=4", "rl.mini_batch_size=8", "rl.max_new_tokens=4"]
    stages = {"sft": short, "rm": short, "dpo": short, "ppo": [*short, *rl]}
    cfg = LabBuildConfig(out=str(toy_lab.out), **TOY)
    paths = run_demo(tmp_path, cfg, n_prompts=6, feedback_prompts=8, overrides=stages, seed=3)
    assert "cached in" in capsys.readouterr().out.split("[2/7]")[0]  # the shared lab build
    for stage in ("sft", "rm", "dpo", "ppo"):
        config = json.loads((tmp_path / stage / "run.json").read_text())["config"]
        assert config["train"]["seed"] == 3, stage
    models = json.loads(paths["json"].read_text())["models"]
    assert {m["settings"]["seed"] for n, m in models.items() if n != "oracle"} == {3}
