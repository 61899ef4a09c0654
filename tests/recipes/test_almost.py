"""ALMoST end to end through the CLI on two tiny models of different sizes (one tokenizer):
synthetic pairs ordered by the prior, RM, RMSP demonstrations, SFT and PPO; a rerun skips
every finished stage, a killed stage redoes only itself and what follows; bad configs name
the field."""

import json

import pytest
import yaml
from transformers import AutoModelForCausalLM

import alignlab.recipes.almost as almost
from alignlab.cli import main
from alignlab.models.tiny import build_tiny_model, tiny_llama_config
from alignlab.recipes import ppo, rm, sft

QUIET = ["train.progress=false", "train.tensorboard=false"]
FAST = ["train.max_steps=1", "train.micro_batch_size=4", *QUIET]
PPO_FAST = [*FAST, "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.max_new_tokens=6"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_tokenizer, tiny_model_dir, sft_file):
    """(small model, big model, prompts, demonstrations): the big one has more parameters."""
    root = tmp_path_factory.mktemp("almost")
    config = tiny_llama_config(len(tiny_tokenizer), hidden_size=48, num_layers=3, num_heads=4)
    big = build_tiny_model(root / "big", tiny_tokenizer, config, seed=1)
    prompts = root / "prompts.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} plus {i % 3}?"}]} for i in range(6)
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tiny_model_dir, big, prompts, sft_file


def write_config(path, assets, out, **changes):
    small, big, prompts, demos = assets
    values = {
        "model": {"path": str(small)},
        "data": {"path": str(prompts)},
        "demos": str(demos),
        "generators": [
            {"name": "small-0", "path": str(small), "shots": 0},
            {"name": "big-2", "path": str(big), "shots": 2},
            {"name": "small-2", "path": str(small), "shots": 2},
        ],
        "max_new_tokens": 12,
        "batch_size": 8,
        "filters": {"min_words": 0, "min_distinct_trigrams": 0.0},  # random models babble
        "rmsp_samples": 3,
        "rm_overrides": FAST,
        "sft_overrides": FAST,
        "ppo_overrides": PPO_FAST,
        "output_dir": str(out),
    } | changes
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def counted(monkeypatch):
    """Calls of each stage's work: sampling, and the rm / sft / ppo recipes."""
    calls = {"sample": 0, "rm": 0, "sft": 0, "ppo": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(almost, "sample_k", counting("sample", almost.sample_k))
    for name, module in (("rm", rm), ("sft", sft), ("ppo", ppo)):
        monkeypatch.setattr(module, "run", counting(name, module.run))
    return calls


@pytest.fixture(scope="module")
def pipeline(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("almost-run")
    config = write_config(root / "almost.yaml", assets, root / "run")
    assert main(["almost", "--config", str(config)]) == 0
    return root / "run", config


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pipeline_orders_pairs_by_the_prior_and_ends_in_ppo(pipeline):
    out, _ = pipeline
    stats = json.loads((out / "comparisons" / "stats.json").read_text())
    # the big model first (more parameters), then the small one by shots
    assert stats["order"] == ["big-2", "small-2", "small-0"]
    pairs = rows_of(out / "comparisons" / "pairs.jsonl")
    order = stats["order"]
    assert pairs and all(
        order.index(p["chosen_generator"]) < order.index(p["rejected_generator"]) for p in pairs
    )
    answers = {
        name: {r["response"] for r in rows_of(out / "generate" / name / "responses.jsonl")}
        for name in order
    }
    assert all(p["chosen"][0]["content"] in answers[p["chosen_generator"]] for p in pairs)
    assert stats["pairs"] + stats["tied"] + sum(stats["dropped"].values()) == 18  # 6 x 3 pairs
    # RMSP: one demonstration per prompt, from the best generator, the RM's best of 3
    demos = rows_of(out / "rmsp" / "demonstrations.jsonl")
    assert len(demos) == 6 and {d["generator"] for d in demos} == {"big-2"}
    assert demos[0]["prompt"][0]["role"] == "user" and len(demos[0]["prompt"]) == 1  # no shots
    rmsp = json.loads((out / "rmsp" / "stats.json").read_text())
    assert rmsp["kept_reward_mean"] >= rmsp["reward_mean"]
    record = json.loads((out / "pipeline.json").read_text())
    assert record["final"] == str(out / "final") and record["made_from"] == str(
        out / "ppo" / "final"
    )
    AutoModelForCausalLM.from_pretrained(out / "final")
    for stage in ("rm", "sft", "ppo"):
        assert (out / stage / "final" / "config.json").exists(), stage
    AutoModelForCausalLM.from_pretrained(out / "ppo" / "final")
    AutoModelForCausalLM.from_pretrained(out / "sft" / "final")


def test_rerun_skips_finished_stages_and_redoes_a_killed_one(pipeline, counted):
    out, config = pipeline
    assert main(["almost", "--config", str(config)]) == 0
    assert counted == {"sample": 0, "rm": 0, "sft": 0, "ppo": 0}
    # a run killed in SFT leaves no final/ (it appears only when complete)
    sft_marker = (out / "sft" / "source.txt").read_text()
    for item in sorted((out / "sft" / "final").rglob("*"), reverse=True):
        item.unlink() if item.is_file() else item.rmdir()
    (out / "sft" / "final").rmdir()
    assert main(["almost", "--config", str(config)]) == 0
    assert counted == {"sample": 0, "rm": 0, "sft": 1, "ppo": 1}  # PPO starts from the new SFT
    assert (out / "sft" / "source.txt").read_text() == sft_marker


def test_changed_generator_resamples_only_itself(assets, tmp_path, counted):
    out = tmp_path / "run"
    config = write_config(tmp_path / "a.yaml", assets, out, final="none")
    assert main(["almost", "--config", str(config)]) == 0
    assert counted == {"sample": 4, "rm": 1, "sft": 1, "ppo": 0}  # 3 generators + RMSP
    assert not (out / "ppo").exists()
    before = {n: (out / "generate" / n / "responses.jsonl").stat().st_mtime_ns
              for n in ("small-0", "big-2")}  # fmt: skip
    small, big, _, _ = assets
    generators = [
        {"name": "small-0", "path": str(small), "shots": 0},
        {"name": "big-2", "path": str(big), "shots": 2},
        {"name": "small-2", "path": str(small), "shots": 1},  # was 2 shots
    ]
    config = write_config(tmp_path / "b.yaml", assets, out, final="none", generators=generators)
    assert main(["almost", "--config", str(config)]) == 0
    # small-2 resampled; the pairs changed, so RM, RMSP and SFT follow
    assert counted == {"sample": 6, "rm": 2, "sft": 2, "ppo": 0}
    after = {n: (out / "generate" / n / "responses.jsonl").stat().st_mtime_ns
             for n in ("small-0", "big-2")}  # fmt: skip
    assert after == before


def test_explicit_ranks_pick_the_rmsp_generator(assets, tmp_path):
    small, big, _, _ = assets
    generators = [
        {"name": "small-2", "path": str(small), "shots": 2, "rank": 1},
        {"name": "big-0", "path": str(big), "shots": 0, "rank": 2},
    ]
    config = write_config(
        tmp_path / "c.yaml", assets, tmp_path / "run", final="none", generators=generators,
        comparison_prompts=3, rmsp_prompts=2,
    )  # fmt: skip
    assert main(["almost", "--config", str(config)]) == 0
    pairs = rows_of(tmp_path / "run" / "comparisons" / "pairs.jsonl")
    assert {p["chosen_generator"] for p in pairs} == {"small-2"}
    demos = rows_of(tmp_path / "run" / "rmsp" / "demonstrations.jsonl")
    assert len(demos) == 2 and {d["generator"] for d in demos} == {"small-2"}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"generators": [{"path": "x"}, {"shots": 1}]}, "generators[1].path missing"),
        ({"generators": [{"path": "x"}, {"path": "y", "rank": 1}]}, "generators[0].rank missing"),
        ({"rmsp_generator": "nobody"}, "rmsp_generator: 'nobody'"),
        ({"demos": ""}, "generators[1].shots=2 needs demonstrations"),
        ({"final": "dpo"}, "final"),
        ({"model": {"path": "x", "lora": {"enabled": True}}}, "model.lora.enabled=True"),
    ],
)
def test_bad_config_names_the_field(assets, tmp_path, capsys, changes, message):
    config = write_config(tmp_path / "bad.yaml", assets, tmp_path / "run", **changes)
    assert main(["almost", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sources_are_checked_before_any_model_loads(assets, tmp_path, capsys, counted):
    small, big, prompts, demos = assets
    missing = [{"path": str(tmp_path / "nowhere"), "shots": 0}, {"path": str(big), "shots": 2}]
    config = write_config(tmp_path / "m.yaml", assets, tmp_path / "run", generators=missing)
    assert main(["almost", "--config", str(config)]) == 2
    assert "generators[0].path" in capsys.readouterr().err
    too_many = [{"path": str(small), "shots": 0}, {"path": str(big), "shots": 999}]
    config = write_config(tmp_path / "n.yaml", assets, tmp_path / "run", generators=too_many)
    assert main(["almost", "--config", str(config)]) == 2
    assert "generators[1].shots=999" in capsys.readouterr().err
    config = write_config(
        tmp_path / "o.yaml", assets, tmp_path / "run", rm_overrides=["train.lrr=1"]
    )
    assert main(["almost", "--config", str(config)]) == 2
    assert (
        "rm_overrides: unknown key 'train.lrr'; did you mean train.lr?" in capsys.readouterr().err
    )
    assert counted["sample"] == 0 and not (tmp_path / "run").exists()
