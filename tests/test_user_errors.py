"""A user's mistake, or what their machine lacks, is one line on stderr and exit code 2.

Every case runs the real command line in a subprocess (`python -m alignlab.cli ...`, with
HF_HUB_OFFLINE=1) and must end with exit code 2, exactly one line on stderr naming the
offending field or file, and no traceback. All but one fail before any model loads; the
reward returning the wrong shape fails at its first rollout, before any optimizer step.

The subprocesses are forks of one interpreter that imported alignlab once (`cli_forks`):
a fresh `python -m alignlab.cli` spends ~4 s importing torch and transformers, which for
every case would take minutes on two cores. `test_a_fresh_interpreter_prints_the_same`
runs one case in a new interpreter too, so output at import time would still be seen.

The environment sets HF_HUB_DISABLE_PROGRESS_BARS=1: transformers draws a "Loading weights"
progress bar on stderr whenever it loads a model, which is not an error and would count as
a line. Nothing else is filtered.

The run-folder cases (another recipe's run, writing over an input, resuming a checkpoint of
another config or of 2 processes with 1) use folders made by hand: run.json and a checkpoint's
trainer_state.json are all the checks read (tests/training/test_run_folder.py makes them by
training).
"""

import errno
import importlib.util
import json
import os
import shutil

import pytest
import torch
from cli_forks import CLIForks, fresh_cli

from alignlab.cli import user_error_line

HAS_CUDA = torch.cuda.is_available()
HAS_QLORA = HAS_CUDA and importlib.util.find_spec("bitsandbytes") is not None
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None

REWARDS = """
def score(prompt, response):
    return float(len(response))


def one_argument(response):
    return 1.0


def too_few(prompts, completions, **kwargs):  # TRL's convention, one reward for the batch
    return [1.0]


def buggy(prompt, response):
    return 1 / 0
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir, sft_file):
    """Paths of the good and the broken inputs the cases name."""
    root = tmp_path_factory.mktemp("user_errors")
    paths = {"root": root, "model": tiny_model_dir, "sft": sft_file}

    def broken_copy(name):
        folder = root / name
        shutil.copytree(tiny_model_dir, folder)
        paths[name] = folder
        return folder

    (broken_copy("no_config") / "config.json").unlink()
    config = broken_copy("bad_config") / "config.json"
    config.write_text(config.read_text().replace('"model_type"', "model_type", 1))
    weights = broken_copy("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    paths["missing"] = root / "no-such-folder"
    paths["rewards"] = root / "rewards.py"
    paths["rewards"].write_text(REWARDS)
    paths["prompts"] = root / "prompts.jsonl"
    paths["prompts"].write_text(
        "".join(json.dumps({"prompt": f"What is {i} plus 1?"}) + "\n" for i in range(4))
    )
    paths["pairs"] = root / "pairs.jsonl"
    paths["pairs"].write_text(
        json.dumps({"prompt": "What is 1 plus 1?", "chosen": " 2", "rejected": " 3"}) + "\n"
    )
    paths["null_prompt"] = root / "null_prompt.jsonl"
    paths["null_prompt"].write_text(json.dumps({"prompt": None, "completion": " 2"}) + "\n")
    paths["bad_yaml"] = root / "bad.yaml"
    paths["bad_yaml"].write_text("train:\n  lr: [1,\n")
    paths["sft_run"] = sft_run_folder(root / "sft_run", paths, world_size=2)
    inside = root / "inside"
    shutil.copytree(tiny_model_dir, inside / "final")
    paths["inside"] = inside
    return paths


def sft_run_folder(out, paths, world_size):
    """A run folder as `alignlab sft` leaves it after step 2, as far as the checks read it: the
    run record of `sft(paths)` and a checkpoint (with weights) saved by `world_size` processes."""
    from alignlab.config import load_config, to_dict
    from alignlab.recipes.sft import SFTConfig

    args = sft({**paths, "root": out.parent}, f"train.output_dir={out}")[1:]
    record = {"recipe": "sft", "config": to_dict(load_config(SFTConfig, None, args))}
    checkpoint = out / "checkpoints" / "step-00000002"
    checkpoint.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps(record))
    state = {"step": 2, "world_size": world_size, "run": record}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (checkpoint / "model.safetensors").write_bytes(b"")  # a model a new run must not lose
    return out


def sft(p, *extra):
    return [
        "sft",
        f"model.path={p['model']}",
        f"data.path={p['sft']}",
        f"train.output_dir={p['root'] / 'run'}",
        *extra,
    ]


def grpo(p, *extra):
    return [
        "grpo",
        f"model.path={p['model']}",
        f"data.path={p['prompts']}",
        f"train.output_dir={p['root'] / 'grpo'}",
        "train.max_steps=1",
        "train.progress=false",
        "train.tensorboard=false",
        "rl.prompts_per_step=2",
        "rl.samples_per_prompt=2",
        "rl.max_new_tokens=4",
        *extra,
    ]


def skip_if(condition, reason):
    """The reason to skip a case on this machine, or None."""
    return reason if condition else None


# (id, argv from the inputs, what the line must name, why it is skipped here or None)
CASES = [
    # the one case that loads the model and samples: the reward answers at the rollout
    ("reward_returns_wrong_shape", lambda p: grpo(p, f"rl.reward={p['rewards']}:too_few"),
     ["rewards.py:too_few", "1 rewards for 4"], None),
    # models, before any loads
    ("hub_id_offline", lambda p: sft(p, "model.path=alignlab-tests/no-such-model"),
     ["model.path=alignlab-tests/no-such-model", "not in the hub cache"], None),
    ("no_such_folder", lambda p: sft(p, f"model.path={p['missing']}"),
     ["model.path=", "no-such-folder", "no such folder"], None),
    ("no_config_json", lambda p: sft(p, f"model.path={p['no_config']}"),
     ["model.path=", "no config.json"], None),
    ("corrupt_config_json", lambda p: sft(p, f"model.path={p['bad_config']}"),
     ["model.path=", "config.json is not valid JSON (line"], None),
    ("truncated_safetensors", lambda p: sft(p, f"model.path={p['truncated']}"),
     ["model.path=", "model.safetensors is truncated or corrupt"], None),
    ("no_such_tokenizer", lambda p: sft(p, f"model.tokenizer={p['missing']}"),
     ["model.tokenizer=", "no such folder"], None),
    ("corrupt_reference", lambda p: [
        "dpo", f"model.path={p['model']}", f"data.path={p['pairs']}",
        f"train.output_dir={p['root'] / 'dpo'}", f"reference.path={p['bad_config']}"],
     ["reference.path=", "config.json is not valid JSON"], None),
    ("no_such_critic", lambda p: [
        "ppo", f"model.path={p['model']}", f"data.path={p['prompts']}",
        f"train.output_dir={p['root'] / 'ppo'}", f"rl.reward={p['rewards']}:score",
        f"critic.path={p['missing']}"],
     ["critic.path=", "no such folder"], None),
    # the machine
    ("qlora_without_cuda", lambda p: sft(
        p, "model.lora.enabled=true", "model.lora.load_in_4bit=true"),
     ["model.lora.load_in_4bit=true", "QLoRA"], skip_if(HAS_QLORA, "QLoRA can run here")),
    ("flash_attention_not_installed", lambda p: sft(
        p, "model.attn_implementation=flash_attention_2"),
     ["model.attn_implementation=flash_attention_2", "flash-attn"],
     skip_if(HAS_FLASH_ATTN, "flash-attn is installed")),
    ("output_dir_is_a_file", lambda p: sft(p, f"train.output_dir={p['sft']}"),
     ["train.output_dir=", "a file is in the way"], None),
    # run folders: never overwritten, mixed up or spliced
    ("resume_two_process_checkpoint", lambda p: sft(
        p, f"train.output_dir={p['sft_run']}", "train.resume=true"),
     ["train.resume:", "step-00000002", "saved by 2 process(es)", "--nproc_per_node 2"], None),
    ("resume_other_config", lambda p: sft(
        p, f"train.output_dir={p['sft_run']}", "train.resume=true", "train.lr=1e-3"),
     ["train.resume:", "train.lr: 2e-05 -> 0.001", "splice"], None),
    ("dpo_into_an_sft_run", lambda p: [
        "dpo", f"model.path={p['model']}", f"data.path={p['pairs']}",
        f"train.output_dir={p['sft_run']}"],
     ["train.output_dir=", "holds a sft run", "train.overwrite=true"], None),
    ("final_dir_holds_another_model", lambda p: sft(p, f"final_dir={p['bad_config']}"),
     ["final_dir=", "already holds files (", "left empty, the model goes to", "train.overwrite=true"], None),
    ("writes_over_its_input", lambda p: sft(
        p, f"model.path={p['inside'] / 'final'}", f"train.output_dir={p['inside']}",
        "train.overwrite=true"),
     ["model.path=", "is an input of this run", "train.output_dir="], None),
    # rewards, before the model loads
    ("reward_function_missing", lambda p: grpo(p, f"rl.reward={p['rewards']}:nope"),
     ["rl.reward=", "rewards.py:nope", "no attribute 'nope'"], None),
    ("reward_file_missing", lambda p: grpo(p, f"rl.reward={p['root'] / 'nofile.py'}:score"),
     ["rl.reward=", "no such file", "nofile.py"], None),
    ("reward_signature", lambda p: grpo(p, f"rl.reward={p['rewards']}:one_argument"),
     ["rl.reward=", "one_argument(response) cannot take (prompt, response)"], None),
    ("reward_folder_not_a_reward_model", lambda p: grpo(p, f"rl.reward={p['model']}"),
     ["rl.reward=", "not a reward model (LlamaForCausalLM)"], None),
    # config and data
    ("typo_names_full_key", lambda p: sft(p, "train.lrr=1"),
     ["unknown key 'train.lrr'; did you mean train.lr?"], None),
    ("null_value_reads_null", lambda p: sft(p, "train.lr=null"),
     ["train.lr: expected float, got null"], None),
    ("checkpoint_fraction_without_checkpointing", lambda p: sft(
        p, "model.checkpoint_fraction=0.5"),
     ["model.checkpoint_fraction=0.5", "needs model.gradient_checkpointing=true"], None),
    ("bad_yaml_override", lambda p: sft(p, "train.lr=[1,"),
     ["override 'train.lr=[1,'", "not valid YAML", "line 1"], None),
    ("bad_yaml_preset", lambda p: ["sft", "--config", str(p["bad_yaml"]), *sft(p)[1:]],
     ["bad.yaml: not valid YAML", "line 3"], None),
    ("data_file_missing", lambda p: sft(p, f"data.path={p['root'] / 'nope.jsonl'}"),
     ["data.path=", "nope.jsonl: no such file or folder"], None),
    ("null_data_field_reads_null", lambda p: sft(p, f"data.path={p['null_prompt']}"),
     ["null_prompt.jsonl:1: field 'prompt': null"], None),
    # the tools
    ("cp_into_missing_folder", lambda p: ["cp", "sft_lab", str(p["missing"] / "x.yaml")],
     ["no-such-folder/x.yaml", "No such file or directory"], None),
    ("eval_no_such_model", lambda p: [
        "eval", "--model", str(p["missing"]), "--prompts", str(p["prompts"])],
     ["--model=", "no such folder"], None),
    ("eval_reward_missing", lambda p: [
        "eval", "--model", str(p["model"]), "--prompts", str(p["prompts"]),
        "--reward", f"{p['rewards']}:nope"],
     ["--reward=", "no attribute 'nope'"], None),
    ("eval_device_without_cuda", lambda p: [
        "eval", "--model", str(p["model"]), "--prompts", str(p["prompts"]), "--device", "cuda"],
     ["--device=cuda", "no CUDA device"], skip_if(HAS_CUDA, "a CUDA device is present")),
    ("eval_missing_argument", lambda p: ["eval", "--prompts", str(p["prompts"])],
     ["alignlab eval", "--model"], None),
    ("lab_eval_no_such_model", lambda p: ["eval", "--model", str(p["missing"])],
     ["--model=", "no such folder"], None),
    ("rm_eval_not_a_reward_model", lambda p: [
        "rm-eval", "--rm", str(p["model"]), "--pairs", str(p["pairs"])],
     ["--rm=", "not a reward model"], None),
    ("lab_build_out_under_a_file", lambda p: ["lab", "build", f"out={p['sft']}/lab"],
     ["out=", "sft.jsonl is a file, so the folder cannot be made"], None),
    ("lab_export_out_is_a_file", lambda p: ["lab", "export", "--out", str(p["sft"])],
     ["--out=", "a file is in the way"], None),
]  # fmt: skip


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@pytest.fixture(scope="module")
def cli():
    forks = CLIForks(ENV)
    yield forks
    forks.close()


def assert_one_line(result, names):
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("alignlab: "), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not in: {lines[0]}"


@pytest.mark.parametrize(
    "argv,names",
    [
        pytest.param(
            argv, names, id=case_id, marks=pytest.mark.skipif(bool(skip), reason=skip or "")
        )
        for case_id, argv, names, skip in CASES
    ],
)
def test_one_line_exit_code_2_no_traceback(cli, inputs, argv, names):
    assert_one_line(cli.run(argv(inputs), inputs["root"]), names)


def test_a_fresh_interpreter_prints_the_same(cli, inputs):
    argv = grpo(inputs, f"rl.reward={inputs['rewards']}:one_argument")
    fresh = fresh_cli(argv, ENV, inputs["root"])
    assert_one_line(fresh, ["rl.reward="])
    assert fresh.stderr == cli.run(argv, inputs["root"]).stderr


def test_a_bug_keeps_its_traceback(cli, inputs):
    # a reward function that raises is the user's code failing: its traceback shows where
    result = cli.run(grpo(inputs, f"rl.reward={inputs['rewards']}:buggy"), inputs["root"])
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr


def test_machine_os_errors_are_one_line_and_others_are_bugs():
    full = OSError(errno.ENOSPC, "No space left on device", "runs/sft/step-3/model.safetensors")
    assert user_error_line(full) == (
        "error: No space left on device (runs/sft/step-3/model.safetensors)"
    )
    assert user_error_line(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert user_error_line(KeyError("a bug")) is None

    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name, without a GPU
        pass

    line = user_error_line(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\n.."))
    assert line.startswith("error: out of accelerator memory (CUDA out of memory.")
    assert "\n" not in line
