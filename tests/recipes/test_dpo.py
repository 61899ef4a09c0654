"""The paired preference recipe (DPO family) end to end on a tiny model: the loss equals
`dpo_loss` on independently computed log-probs, training separates chosen from rejected,
accumulation and data parallelism are exact, a killed run resumes to the same result."""

import json

import pytest
import torch
from recipe_runs import SGD, launch, launch_two, records, series
from transformers import AutoModelForCausalLM, AutoTokenizer
from weights import assert_close_series, assert_identical_weights, assert_same_updates

from alignlab.config import load_config
from alignlab.losses.preference import dpo_loss
from alignlab.models.tiny import build_tiny_model, tiny_llama_config
from alignlab.recipes import dpo


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pair_records(n=32):
    rows = []
    for i in range(n):
        a, b = i % 7, (i * 3) % 5
        rows.append(
            {
                "prompt": f"What is {a} plus {b}?",
                "chosen": f" {a} plus {b} equals {a + b}.",
                "rejected": " sorry cannot help" if i % 2 else f" {a} plus {b} equals {a + b + 1}.",
            }
        )
    return rows


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_records()))
    return path


def overrides(model_dir, data_file, out, *extra):
    return [
        f"model.path={model_dir}",
        f"data.path={data_file}",
        f"train.output_dir={out}",
        "train.lr=1e-3",
        "train.progress=false",
        "train.tensorboard=false",
        "train.micro_batch_size=4",
        *extra,
    ]


def run_dpo(model_dir, data_file, out, *extra):
    return dpo.run(load_config(dpo.DPOConfig, None, overrides(model_dir, data_file, out, *extra)))


def summed_logps(model, tokenizer, prompt, response):
    """log p(response + EOS | prompt) from plain HF logits (independent of alignlab)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    response_ids = response_ids + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logps = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    picked = logps.gather(-1, targets[:, None]).squeeze(-1)
    return picked[len(prompt_ids) - 1 :].sum()


def test_first_step_loss_equals_dpo_loss_by_hand(tiny_model_dir, tiny_tokenizer, tmp_path):
    ref_dir = build_tiny_model(
        tmp_path / "ref", tiny_tokenizer,
        tiny_llama_config(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4), seed=1,
    )  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pair_records(4)))
    out = tmp_path / "run"
    run_dpo(tiny_model_dir, data, out, "train.max_steps=1", f"reference.path={ref_dir}", "beta=0.5")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(ref_dir).eval()
    logps = {
        name: torch.stack(
            [
                summed_logps(model, tokenizer, r["prompt"], r[side])
                for r in pair_records(4)
            ]
        )
        for name, model, side in [
            ("pc", policy, "chosen"), ("pr", policy, "rejected"),
            ("rc", ref, "chosen"), ("rr", ref, "rejected"),
        ]
    }  # fmt: skip
    losses, chosen_r, rejected_r = dpo_loss(
        logps["pc"], logps["pr"], logps["rc"], logps["rr"], beta=0.5
    )
    (first,) = [r for r in records(out) if "train/loss" in r]
    assert abs(first["train/loss"] - losses.mean().item()) < 1e-5
    assert abs(first["train/rewards/chosen"] - chosen_r.mean().item()) < 1e-5
    assert abs(first["train/rewards/margin"] - (chosen_r - rejected_r).mean().item()) < 1e-5
    assert abs(first["train/logps/chosen"] - logps["pc"].mean().item()) < 1e-4
    assert first["train/loss"] != pytest.approx(0.6931, abs=1e-3)  # a real reference was used


def test_dpo_training_separates_chosen_from_rejected(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    final = run_dpo(
        tiny_model_dir, pairs_file, out, "train.max_steps=12", "train.micro_batch_size=8", "train.lr=3e-3",
        "data.eval_fraction=0.25", "train.eval_every=6", "train.tensorboard=true",
    )  # fmt: skip
    margins = series(out, "train/rewards/margin")
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert margins[-1] > 0.2
    assert min(series(out, "train/rewards/accuracy")[-3:]) >= 0.75
    assert series(out, "train/loss")[-1] < 0.6
    evals = series(out, "eval/rewards/accuracy")
    assert len(evals) == 2 and evals[-1] >= 0.75
    assert series(out, "train/logratio/chosen")  # honest name: not a KL
    assert any((out / "tensorboard").iterdir())
    AutoModelForCausalLM.from_pretrained(final)


def test_grad_accumulation_2x2_equals_batch_4(tiny_model_dir, pairs_file, tmp_path):
    # same pairs, same normalisation, only the float summation order differs: compared under
    # plain SGD without clipping, where that order moves the weights by a tiny part of the update
    common = ("train.max_steps=3", "nll_weight=0.5", *SGD)
    big = run_dpo(tiny_model_dir, pairs_file, tmp_path / "b4", *common)
    acc = run_dpo(
        tiny_model_dir, pairs_file, tmp_path / "a2x2", *common,
        "train.micro_batch_size=2", "train.grad_accum=2",
    )  # fmt: skip
    for key in ("train/loss", "train/nll", "train/rewards/margin"):
        assert_close_series(series(tmp_path / "b4", key), series(tmp_path / "a2x2", key), what=key)
    assert_same_updates(big, acc, start=tiny_model_dir)


def test_killed_run_resumes_to_the_same_result_reusing_reference_cache(
    tiny_model_dir, pairs_file, tmp_path
):
    resumable = ("train.max_steps=6", "train.save_every=2", "reference.mode=precomputed")
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    reference = launch(
        "dpo", "DPOConfig", overrides(tiny_model_dir, pairs_file, ref_out, *resumable)
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = launch(
        "dpo", "DPOConfig", overrides(tiny_model_dir, pairs_file, out, *resumable), crash="step:3"
    )
    assert killed.returncode == -9
    assert (out / "reference_logps.pt").exists()
    resumed = launch(
        "dpo", "DPOConfig",
        overrides(tiny_model_dir, pairs_file, out, *resumable, "train.resume=true"),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "reusing" in resumed.stdout
    got, want = series(out, "train/loss"), series(ref_out, "train/loss")
    assert [r["step"] for r in records(out)] == list(range(1, 7))
    assert got == want  # the same computation in the same order: bit for bit
    assert_identical_weights(out / "final", ref_out / "final")


@pytest.mark.distributed
def test_two_processes_match_one_process(tiny_model_dir, pairs_file, tmp_path):
    common = ("train.max_steps=3", "train.save_every=2", "data.eval_fraction=0.25", *SGD)
    one = launch("dpo", "DPOConfig", overrides(tiny_model_dir, pairs_file, tmp_path / "one", *common, "train.micro_batch_size=8"))  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two_args = overrides(tiny_model_dir, pairs_file, tmp_path / "two", *common)
    two = launch_two("dpo", "DPOConfig", two_args, tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("final model:") == 1
    # float summation order differs between one process and a reduce-scatter
    for key in ("train/loss", "train/rewards/margin", "eval/loss", "eval/rewards/accuracy"):
        a, b = series(tmp_path / "one", key), series(tmp_path / "two", key)
        assert_close_series(a, b, what=key)
    assert_same_updates(tmp_path / "one" / "final", tmp_path / "two" / "final", tiny_model_dir)


@pytest.mark.parametrize(
    "extra",
    [
        ("loss=ipo",),
        ("loss=ipo", "ipo_logps=sum", "beta=1.0"),
        ("loss=slic",),
        ("loss=orpo",),
        ("loss=simpo", "beta=2.0"),
        ("loss=dpo", "label_smoothing=0.1", "reference.mode=model"),
        ("model.lora.enabled=true", "model.lora.r=4", "reference.mode=adapter",
         "model.lora.save_adapter=true"),
    ],
    ids=["ipo", "ipo-sum", "slic", "orpo", "simpo", "cdpo-model", "lora-adapter"],
)  # fmt: skip
def test_each_loss_trains_end_to_end(tiny_model_dir, pairs_file, tmp_path, extra):
    out = tmp_path / "run"
    final = run_dpo(tiny_model_dir, pairs_file, out, "train.max_steps=4", "train.lr=3e-3", *extra)
    losses = series(out, "train/loss")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    reference_free = any(x in extra for x in ("loss=slic", "loss=orpo", "loss=simpo"))
    assert bool(series(out, "train/logratio/chosen")) == (not reference_free)
    precomputed = not reference_free and not any(x.startswith("reference.mode") for x in extra)
    assert (out / "reference_logps.pt").exists() == precomputed  # the default
    active = series(out, "train/hinge_active")  # slic: the share of pairs still pushed
    assert bool(active) == ("loss=slic" in extra)
    assert all(0.0 <= a <= 1.0 for a in active)
    AutoModelForCausalLM.from_pretrained(final)
    if "model.lora.enabled=true" in extra:
        assert (final / "adapter" / "adapter_config.json").exists()


def test_config_refuses_bad_combinations(tiny_model_dir, pairs_file, tmp_path):
    from alignlab.config import ConfigError

    base = overrides(tiny_model_dir, pairs_file, tmp_path)
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(dpo.DPOConfig, None, [*base, "loss=ipo", "label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="lora"):
        load_config(dpo.DPOConfig, None, [*base, "reference.mode=adapter"])
    # reference-free losses ignore the reference section entirely
    load_config(dpo.DPOConfig, None, [*base, "loss=simpo", "reference.mode=adapter"])
