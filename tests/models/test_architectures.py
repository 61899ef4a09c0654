"""Real architectures, built tiny from their transformers configs, with their real chat templates:
GPT-2 (learned positions, dropout 0.1, no template), Qwen2, Mistral, Gemma2 (eager attention
only, logit soft-capping) and Phi-3. They load with the default attention kernel, train with SFT
and DPO from the CLI, and preference / RL recipes see no dropout: the policy computes what its
reference computes until it is updated."""

import json
import math

import pytest
import torch
from real_templates import FAMILIES, family_tokenizer
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)

from alignlab.cli import main
from alignlab.config import ModelConfig
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.tiny import train_tokenizer

BODY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}  # fmt: skip
# architecture -> (config class, its arguments with every dropout at 0.1, chat template family)
ARCHITECTURES = {
    "gpt2": (GPT2Config, {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256,
                          "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}, None),
    "qwen2": (Qwen2Config, {**BODY, "num_key_value_heads": 2, "attention_dropout": 0.1}, "qwen2.5"),
    "mistral": (MistralConfig, {**BODY, "num_key_value_heads": 2, "attention_dropout": 0.1}, "llama3"),
    "gemma2": (Gemma2Config, {**BODY, "num_key_value_heads": 2, "head_dim": 8,
                              "attention_dropout": 0.1}, "gemma"),
    "phi3": (Phi3Config, {**BODY, "num_key_value_heads": 4, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
                          "attention_dropout": 0.1}, "phi3"),
}  # fmt: skip


def build(arch, folder):
    config_cls, kwargs, family = ARCHITECTURES[arch]
    if family is None:  # GPT-2: a plain BPE tokenizer with an EOS and no chat template
        tokenizer = train_tokenizer(["What is two plus two? Four. Name a colour. Blue."] * 8, 300)
        tokenizer.chat_template = None
    else:
        tokenizer = family_tokenizer(FAMILIES[family])
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = config_cls(vocab_size=len(tokenizer), pad_token_id=None, **ids, **kwargs)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def arch_dir(request, tmp_path_factory):
    return request.param, build(request.param, tmp_path_factory.mktemp(request.param) / "model")


def chat_rows(n=8):
    return [
        {"messages": [
            {"role": "user", "content": f"What is {i} plus two?"},
            {"role": "assistant", "content": f"{i} plus two is {i + 2}."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
        ]}
        for i in range(n)
    ]  # fmt: skip


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def forward(model, ids):
    return model(input_ids=ids).logits


def test_preference_and_rl_recipes_train_without_dropout(arch_dir):
    arch, folder = arch_dir
    tokenizer = load_tokenizer(ModelConfig(path=str(folder)))
    ids = torch.tensor([tokenizer("What is two plus two? Four.")["input_ids"]])
    kept = load_model(ModelConfig(path=str(folder)), tokenizer).train()
    torch.manual_seed(1)
    assert not torch.equal(forward(kept, ids), forward(kept, ids))  # the config has dropout
    off = load_model(ModelConfig(path=str(folder), disable_dropout=True), tokenizer).train()
    with torch.no_grad():
        train_mode = forward(off, ids)
        eval_mode = forward(off.eval(), ids)
    torch.testing.assert_close(train_mode, eval_mode, rtol=0, atol=0)
    rates = [v for k, v in off.config.to_dict().items() if "drop" in k and isinstance(v, float)]
    assert rates and set(rates) == {0.1}  # the config (and so the saved model) keeps its rates


def test_partial_checkpointing_gives_the_plain_gradients(arch_dir):
    # the first layer recomputed (in Qwen2 and Mistral without its MLP down projection),
    # the second kept: the same kernels on the same inputs as the plain backward
    arch, folder = arch_dir
    tokenizer = load_tokenizer(ModelConfig(path=str(folder)))
    ids = torch.tensor([tokenizer("What is two plus two? Four.")["input_ids"]])
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    grads = []
    for checkpointing in ({}, {"gradient_checkpointing": True, "checkpoint_fraction": 0.5}):
        cfg = ModelConfig(path=str(folder), disable_dropout=True, **checkpointing)
        model = load_model(cfg, tokenizer).train()
        TokenLogProbs(model)(batch).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=f"{arch}: {name}")


def test_sft_then_dpo_from_the_cli_with_the_real_template(arch_dir, tmp_path):
    arch, folder = arch_dir
    common = ["train.progress=false", "train.tensorboard=false", "train.micro_batch_size=4"]
    sft_out = tmp_path / "sft"
    data = write(tmp_path / "chat.jsonl", chat_rows())
    args = [f"model.path={folder}", f"data.path={data}", f"train.output_dir={sft_out}"]
    assert main(["sft", *args, "train.max_steps=2", *common]) == 0
    saved = AutoModelForCausalLM.from_pretrained(sft_out / "final").config
    assert saved.model_type == AutoModelForCausalLM.from_pretrained(folder).config.model_type
    pairs = [
        {"prompt": [{"role": "user", "content": f"What is {i} plus two?"}],
         "chosen": [{"role": "assistant", "content": f"{i + 2}."}],
         "rejected": [{"role": "assistant", "content": "Blue."}]}
        for i in range(8)
    ]  # fmt: skip
    dpo_out = tmp_path / "dpo"
    args = [f"model.path={sft_out / 'final'}", f"data.path={write(tmp_path / 'p.jsonl', pairs)}"]
    assert main(["dpo", *args, f"train.output_dir={dpo_out}", "train.max_steps=1", *common]) == 0
    records = [json.loads(line) for line in (dpo_out / "metrics.jsonl").read_text().splitlines()]
    (first,) = [r for r in records if "train/loss" in r]
    # the policy is its reference at step 1: log-ratios 0 and the loss log 2, up to the float
    # rounding of two equal summed log-probs (a few ulps of their size)
    scale = abs(first["train/logps/chosen"]) + abs(first["train/logps/rejected"])
    rounding = 16 * torch.finfo(torch.float32).eps * scale
    assert abs(first["train/logratio/chosen"]) <= rounding
    assert abs(first["train/logratio/rejected"]) <= rounding
    assert abs(first["train/loss"] - math.log(2)) <= 0.1 * rounding + 1e-6


def test_grpo_first_step_kl_is_zero_with_gpt2_dropout(tmp_path):
    folder = build("gpt2", tmp_path / "gpt2")
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": "What is two plus two?"}] * 4)
    (tmp_path / "reward.py").write_text("def length(prompt, response):\n    return len(response)\n")
    out = tmp_path / "grpo"
    code = main([
        "grpo", f"model.path={folder}", f"data.path={prompts}", f"rl.reward={tmp_path / 'reward.py'}:length",
        f"train.output_dir={out}", "train.max_steps=1", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
        "rl.max_new_tokens=6", "train.progress=false", "train.tensorboard=false",
    ])  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (first,) = [r for r in records if "train/kl_ref" in r]
    assert abs(first["train/kl_ref"]) < 1e-6, first["train/kl_ref"]


def test_sequences_longer_than_gpt2_positions_are_refused_before_training(tmp_path, capsys):
    config_cls, kwargs, _ = ARCHITECTURES["gpt2"]
    folder = build("gpt2", tmp_path / "gpt2")
    short = AutoModelForCausalLM.from_pretrained(folder)
    short.config.n_positions = 16
    short.save_pretrained(folder)  # only the config matters to the check
    rows = [{"prompt": "What is two plus two? " * 4, "completion": " Four."}] * 4
    out = tmp_path / "run"
    code = main(["sft", f"model.path={folder}", f"data.path={write(tmp_path / 'd.jsonl', rows)}",
                 f"train.output_dir={out}", "train.progress=false"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "data.max_length=1024" in err and "n_positions" in err and "16" in err, err
    assert not out.exists()


def test_local_judge_reads_each_verdict_as_one_unpadded_forward_would(arch_dir):
    # verdict probabilities of a batch of different lengths (left padding, positions counted
    # from each row's first token) against each conversation alone, unpadded, through the
    # real template: the same softmax over the verdict logits
    from alignlab.judges import load_local_judge
    from alignlab.judges.templates import PAIR_VERDICTS, JudgeTemplates

    arch, folder = arch_dir
    # a short question: GPT-2's 256 positions hold it in these tiny tokenizers' many tokens
    short = JudgeTemplates(pairwise="{prompt}\nA: {response_a}\nB: {response_b}\nA or B?")
    judge = load_local_judge(str(folder), batch_size=8, templates=short)
    prompt = [{"role": "user", "content": "What is two plus two?"}]
    answers = ["Four.", "Blue, and then some more words.", "It is four, as two plus two is four."]
    conversations = [judge.templates.pairwise_messages(prompt, a, b)
                     for a in answers for b in answers if a != b]  # fmt: skip
    batched = torch.tensor(judge.verdict_probs(conversations, PAIR_VERDICTS), dtype=torch.float64)
    assert judge.forward_passes == 1 and batched.shape == (len(conversations), 2)
    alone = []
    for conversation in conversations:
        ids, verdict_ids = judge.encode(judge.judge_text(conversation), PAIR_VERDICTS)
        with torch.no_grad():
            logits = judge.model(input_ids=torch.tensor([ids])).logits[0, -1, verdict_ids]
        alone.append(logits.double().softmax(-1))
    # fp32 logits whose summation order differs with the padding: a few ulps of the logits
    tolerance = 64 * torch.finfo(torch.float32).eps * max(1.0, float(logits.abs().max()))
    torch.testing.assert_close(batched, torch.stack(alone), rtol=0, atol=tolerance)
    probs = judge.compare([prompt] * 2, answers[:2], answers[1:])
    assert all(0 < p < 1 for p in probs)
