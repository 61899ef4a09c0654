"""torchrun with 2 CPU processes (gloo) and FSDP2 against one process: same losses, weights."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from vlm_runs import tiny_vlm_world
from weights import assert_close_series, assert_same_updates, weights

pytestmark = pytest.mark.distributed


def launch(nproc, recipe, *args, timeout=600):
    """`alignlab <recipe> args`: in this interpreter's python (1 process) or under torchrun with
    gloo on the CPU; fails the test on a non-zero exit."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "alignlab.cli", recipe, *args]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "alignlab.cli"]
        cmd += [recipe, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run(nproc, model_dir, data_file, out, *extra):
    args = [
        f"model.path={model_dir}",
        f"data.path={data_file}",
        f"train.output_dir={out}",
        "train.lr=1e-3",
        "train.max_steps=4",
        "train.progress=false",
        "train.tensorboard=false",
        *extra,
    ]
    return launch(nproc, "sft", *args)


def losses(out, key="train/loss"):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_two_processes_match_one_process_with_double_batch(tiny_model_dir, sft_file, tmp_path):
    # 16 eval examples = 4 batches of 4: an even count per rank (once hung FSDP2 eval)
    # float summation order differs between one process and a reduce-scatter: compared under
    # plain SGD (tests/weights.py)
    common = ("train.save_every=2", "data.eval_fraction=0.34", "train.eval_every=2")
    common += ("train.optimizer=sgd", "train.lr=0.5", "train.max_grad_norm=0")
    run(1, tiny_model_dir, sft_file, tmp_path / "one", "train.micro_batch_size=8", *common)
    result = run(2, tiny_model_dir, sft_file, tmp_path / "two", "train.micro_batch_size=4", *common)
    # only rank 0 prints and writes
    assert result.stdout.count("final model:") == 1
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert_close_series(one, two, what="train/loss")
    eval_one, eval_two = (
        losses(tmp_path / "one", "eval/loss"),
        losses(tmp_path / "two", "eval/loss"),
    )
    assert len(eval_one) == len(eval_two) == 2
    assert_close_series(eval_one, eval_two, what="eval/loss")
    # the sharded model saved as one plain HF folder, moved as one process moved it
    assert_same_updates(tmp_path / "one" / "final", tmp_path / "two" / "final", tiny_model_dir)
    assert (tmp_path / "two" / "checkpoints" / "step-00000002" / "model.safetensors").exists()


VLM_RUNS = {
    "vlm_sft": ("vlm_sft_stage2", "sft.jsonl"),
    "vlm_dpo": ("vlm_dpo_lab", "preference.jsonl"),
    "vlm_rm": ("vlm_rm_lab", "preference.jsonl"),
}


@pytest.fixture(scope="module")
def vlm_world(tmp_path_factory):
    return tiny_vlm_world(tmp_path_factory.mktemp("vlm"), n_train=16)


@pytest.mark.parametrize("recipe", sorted(VLM_RUNS))
def test_vlm_recipes_two_processes_match_one_process(vlm_world, tmp_path, recipe):
    """A LLaVA under FSDP2 (decoder and tower layers sharded, the frozen tower inside the
    shards) in each vision recipe: the same losses and updates as one process with the
    double batch, and the tower left untouched."""
    model_dir, shapes = vlm_world
    preset, data = VLM_RUNS[recipe]
    common = [
        "--config", preset, f"model.path={model_dir}", f"data.path={shapes / data}",
        "train.max_steps=3", "train.optimizer=sgd", "train.lr=0.5", "train.max_grad_norm=0",
        "train.log_every=1", "train.progress=false", "train.tensorboard=false",
        "data.eval_fraction=0",
    ]  # fmt: skip
    launch(1, recipe, *common, f"train.output_dir={tmp_path / 'one'}", "train.micro_batch_size=8")
    result = launch(
        2, recipe, *common, f"train.output_dir={tmp_path / 'two'}", "train.micro_batch_size=4"
    )
    assert sum(line.startswith("final ") for line in result.stdout.splitlines()) == 1  # rank 0
    assert_close_series(losses(tmp_path / "one"), losses(tmp_path / "two"), what="train/loss")
    assert_same_updates(tmp_path / "one" / "final", tmp_path / "two" / "final", model_dir)
    start, final = weights(model_dir), weights(tmp_path / "two" / "final")
    tower = [k for k in start if "vision_tower" in k]
    assert tower and all(torch.equal(start[k], final[k]) for k in tower)
    assert (tmp_path / "two" / "final" / "processor_config.json").exists()


def test_vlm_grpo_two_processes_smoke(vlm_world, tmp_path):
    """VLM GRPO under torchrun: each rank samples its prompts with their images through its
    unsharded sampling copy; the sharded policy saves one plain folder with the processor."""
    model_dir, shapes = vlm_world
    reward = tmp_path / "reward.py"
    reward.write_text("def has_e(prompt, response):\n    return float('e' in response)\n")
    args = [
        "--config", "vlm_grpo_lab", f"model.path={model_dir}",
        f"data.path={shapes / 'train_prompts.jsonl'}", f"rl.reward={reward}:has_e",
        f"train.output_dir={tmp_path / 'two'}", "train.max_steps=2", "rl.prompts_per_step=4",
        "rl.samples_per_prompt=2", "rl.max_new_tokens=4", "train.progress=false",
        "train.tensorboard=false", "train.log_every=1",
    ]  # fmt: skip
    result = launch(2, "vlm_grpo", *args)
    assert result.stdout.count("final model:") == 1
    assert len(losses(tmp_path / "two", "train/reward_mean")) == 2
    assert (tmp_path / "two" / "final" / "processor_config.json").exists()


def test_ppo_two_processes_smoke(tmp_path):
    """PPO under torchrun: policy and critic FSDP2-sharded, whitening over the gathered batch,
    the ptx term; checkpoints hold the critic, the final critic is one plain HF folder."""
    from transformers import AutoModelForSequenceClassification
    from word_model import build_word_model

    model_dir = build_word_model(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a b", "b c"] * 4))
    (tmp_path / "reward.py").write_text(
        "def contains(prompt, response):\n    return float('a' in response.split())\n"
    )
    ptx = tmp_path / "ptx.jsonl"
    ptx.write_text(json.dumps({"text": "c c c"}) + "\n")
    out = tmp_path / "ppo"
    args = [
        f"model.path={model_dir}", f"data.path={prompts}",
        f"rl.reward={tmp_path / 'reward.py'}:contains",
        f"train.output_dir={out}", "train.max_steps=3", "train.save_every=2",
        "train.progress=false", "train.tensorboard=false", "rl.max_new_tokens=8",
        "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.num_iterations=2",
        "rl.mini_batch_size=8", f"ptx.path={ptx}", "ptx.coef=1", "ptx.batch_size=2",
    ]  # fmt: skip
    launch(2, "ppo", *args, timeout=300)
    for key in ("train/loss", "train/value_loss", "train/ptx_nll", "train/explained_variance"):
        values = losses(out, key)
        assert len(values) == 3 and all(math.isfinite(v) for v in values), key
    assert (out / "checkpoints" / "step-00000002" / "critic.pt").exists()
    AutoModelForSequenceClassification.from_pretrained(out / "critic")


# --- ReST and RAFT: each process samples a block of the prompts, all of them train every stage ---

SCORED_PROMPTS = ["a b", "b c", "c a b", "b", "c c"]  # 5: blocks of 3 and 2 over 2 processes
K = 4

SCORING_REWARD = """
import json, os


def contains(prompt, response):
    # which process scored what: the test checks the prompts were split, and gathered
    with open(os.path.join(os.path.dirname(__file__), f"scored-{os.environ['RANK']}.jsonl"), "a") as f:
        f.write(json.dumps([prompt, response]) + "\\n")
    return float("a" in response.split())
"""


def sample_filter_run(tmp_path, recipe, *extra):
    """`recipe` under torchrun (2 processes) on the word model; (output folder, the
    (prompt, response) pairs each rank scored, stdout, the recipe's options)."""
    from word_model import build_word_model

    model_dir = build_word_model(tmp_path / "policy")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SCORED_PROMPTS))
    (tmp_path / "reward.py").write_text(SCORING_REWARD)
    out = tmp_path / recipe
    args = [
        f"model.path={model_dir}", f"data.path={prompts}",
        f"sampling.reward={tmp_path / 'reward.py'}:contains", f"train.output_dir={out}",
        "train.lr=3e-3", "train.micro_batch_size=2", "train.progress=false",
        "train.tensorboard=false", "sampling.max_new_tokens=8", f"sampling.samples_per_prompt={K}",
        *extra,
    ]  # fmt: skip
    # train.epochs, not max_steps: each process counts the steps from the SFT file it reads, so
    # processes that filtered different sets would run different step counts and hang
    result = launch(2, recipe, *args, timeout=300)
    scored = {
        rank: [tuple(pair) for pair in rows_of(tmp_path / f"scored-{rank}.jsonl")]
        for rank in (0, 1)
    }
    return out, scored, result.stdout, args


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_samples(samples, prompts, scored_blocks):
    """Prompt-major rows, K per prompt, holding what each process scored of its block."""
    assert len(samples) == len(prompts) * K
    assert [s["prompt"] for s in samples] == [p for p in prompts for _ in range(K)]
    assert [s["prompt_index"] for s in samples] == [n // K for n in range(len(samples))]
    pairs = [(s["prompt"], s["completion"]) for s in samples]
    assert sorted(pairs) == sorted(scored_blocks[0] + scored_blocks[1])  # rank 0 holds rank 1's
    for s in samples:
        assert s["reward"] == float("a" in s["completion"].split())


def test_rest_two_processes_smoke(tmp_path):
    """ReST under torchrun: each process samples and scores its block of the prompts, rank 0's
    samples.jsonl holds all of them in prompt order, every Improve step trains (FSDP2) on the
    samples at or above its threshold, the final model is one plain HF folder."""
    from transformers import AutoModelForCausalLM

    out, scored, stdout, _ = sample_filter_run(
        tmp_path, "rest", "grow_steps=2", "improve_steps=2", "thresholds=[0.0,0.5]"
    )
    # each process scored only its own block: 3 prompts on rank 0, 2 on rank 1, each Grow step
    assert {p for p, _ in scored[0]} <= set(SCORED_PROMPTS[:3]) and len(scored[0]) == 2 * 3 * K
    assert {p for p, _ in scored[1]} <= set(SCORED_PROMPTS[3:]) and len(scored[1]) == 2 * 2 * K
    thresholds = [r["rest/threshold"] for r in rows_of(out / "metrics.jsonl")]
    assert len(thresholds) == 4
    for grow in range(2):
        samples = rows_of(out / f"grow_{grow}" / "samples.jsonl")
        blocks = {
            0: scored[0][grow * 3 * K : (grow + 1) * 3 * K],
            1: scored[1][grow * 2 * K : (grow + 1) * 2 * K],
        }
        check_samples(samples, SCORED_PROMPTS, blocks)
        for improve in range(2):
            stage = out / f"grow_{grow}" / f"improve_{improve}"
            threshold = thresholds[grow * 2 + improve]
            want = [s for s in samples if s["reward"] >= threshold and s["completion"].strip()]
            assert rows_of(stage / "sft.jsonl") == want
            assert any("train/loss" in r for r in rows_of(stage / "metrics.jsonl"))
            AutoModelForCausalLM.from_pretrained(stage / "final")
    AutoModelForCausalLM.from_pretrained(out / "final")
    assert stdout.count(f"final model: {out / 'final'}\n") == 1  # rank 0 only


def test_raft_two_processes_smoke_and_resume(tmp_path):
    """RAFT under torchrun: each iteration's prompts split over the processes, the best sample
    per prompt trained on by both; a rerun with train.resume=true under torchrun reads every
    iteration back and trains nothing."""
    from transformers import AutoModelForCausalLM

    out, scored, stdout, args = sample_filter_run(
        tmp_path, "raft", "iterations=2", "prompts_per_iteration=3"
    )
    # 3 prompts per iteration: blocks of 2 (rank 0) and 1 (rank 1)
    assert len(scored[0]) == 2 * 2 * K and len(scored[1]) == 2 * 1 * K
    for iteration in range(2):
        stage = out / f"iteration_{iteration}"
        samples = rows_of(stage / "samples.jsonl")
        prompts = [samples[n * K]["prompt"] for n in range(3)]
        blocks = {
            0: scored[0][iteration * 2 * K : (iteration + 1) * 2 * K],
            1: scored[1][iteration * K : (iteration + 1) * K],
        }
        check_samples(samples, prompts, blocks)
        assert [p for p, _ in blocks[0][::K]] == prompts[:2] and blocks[1][0][0] == prompts[2]
        best = []
        for p in range(3):
            group = samples[p * K : (p + 1) * K]
            best.append(next(s for s in group if s["reward"] == max(g["reward"] for g in group)))
        want = [s for s in best if s["completion"].strip()]
        if want:
            assert rows_of(stage / "sft.jsonl") == want
            AutoModelForCausalLM.from_pretrained(stage / "final")
    AutoModelForCausalLM.from_pretrained(out / "final")
    assert stdout.count(f"final model: {out / 'final'}\n") == 1

    names = ("final/model.safetensors", "samples.jsonl", "sft.jsonl", "metrics.jsonl")
    files = [out / f"iteration_{i}" / name for i in range(2) for name in names]
    before = {p: p.stat().st_mtime_ns for p in files if p.exists()}
    assert len(before) >= 4  # both samples.jsonl and at least one trained iteration

    def summaries():
        return [{k: v for k, v in r.items() if k != "time"} for r in rows_of(out / "metrics.jsonl")]

    records = summaries()
    launch(2, "raft", *args, "train.resume=true", timeout=300)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing sampled or trained
    for rank in (0, 1):  # no process scored anything again
        assert len(rows_of(tmp_path / f"scored-{rank}.jsonl")) == len(scored[rank])
    assert summaries() == records  # the summaries are logged again, once
