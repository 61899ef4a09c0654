"""The chat template of a tokenizer without one: every turn ends with a single token that is
trained, kept through padding, and a stop token of generation.

GPT-2 is the case: no template, no `<|im_end|>`, EOS `<|endoftext|>` reused as padding. Its
folder is built here (a BPE vocabulary trained on a few lines, a GPT-2 of 2 layers).
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
from transformers import PreTrainedTokenizerFast as FastTokenizer
from word_model import _one_thread  # noqa: F401 - an autouse fixture

from alignlab.config import ModelConfig
from alignlab.data.collate import collate
from alignlab.data.templates import (
    CHATML_END_OF_TURN,
    DEFAULT_CHAT_TEMPLATE,
    EOS_CHAT_TEMPLATE,
    chat_segments,
    render_messages,
)
from alignlab.data.tokenize import tokenize_segments
from alignlab.models.generation import generate, stop_token_ids
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.tiny import train_bpe
from alignlab.ops import IGNORE_INDEX

TEXTS = [
    "What is two plus two? Two plus two is four.",
    "Name a colour. Blue is a colour. user assistant system",
] * 8
QUESTION = {"role": "user", "content": "What is two plus two?"}
ANSWER = {"role": "assistant", "content": "Two plus two is four."}
CHAT = [QUESTION, ANSWER, {"role": "user", "content": "Name a colour."}]
CHAT += [{"role": "assistant", "content": "Blue."}]


def _bpe(special_tokens):
    return train_bpe(TEXTS, 300, special_tokens)


def _save_with_gpt2(tokenizer, folder, eos_id):
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return ModelConfig(path=str(folder))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """ModelConfig of a GPT-2 folder: GPT2TokenizerFast (EOS <|endoftext|>, no pad, no chat
    template) and an untrained 2-layer model."""
    folder = tmp_path_factory.mktemp("gpt2")
    files = _bpe(["<|endoftext|>"]).model.save(str(folder))
    tokenizer = GPT2TokenizerFast(vocab=files[0], merges=files[1])
    assert tokenizer.chat_template is None and tokenizer.pad_token is None
    return _save_with_gpt2(tokenizer, folder, tokenizer.eos_token_id)


def trained_runs(row):
    """The runs of consecutive trained token ids."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs + [current] if current else runs


def chat_row(tokenizer, messages):
    ids, labels = tokenize_segments(tokenizer, chat_segments(tokenizer, messages))
    return {"input_ids": ids, "labels": labels}


def test_gpt2_fallback_ends_every_turn_with_trained_eos(gpt2):
    tokenizer = load_tokenizer(gpt2)
    eos = tokenizer.eos_token_id
    assert tokenizer.chat_template == EOS_CHAT_TEMPLATE
    assert tokenizer.pad_token_id == eos
    runs = trained_runs(chat_row(tokenizer, CHAT))
    assert [tokenizer.decode(run) for run in runs] == [
        "Two plus two is four.<|endoftext|>",
        "Blue.<|endoftext|>",
    ]
    for run, content in zip(runs, ["Two plus two is four.", "Blue."]):  # one token, EOS
        assert run == tokenizer(content, add_special_tokens=False)["input_ids"] + [eos]


def test_trained_eos_is_not_taken_for_padding(gpt2):
    tokenizer = load_tokenizer(gpt2)
    eos = tokenizer.eos_token_id
    rows = [chat_row(tokenizer, CHAT), chat_row(tokenizer, CHAT[:2])]
    batch = collate(rows, tokenizer.pad_token_id)
    assert (batch["input_ids"][1, len(rows[1]["input_ids"]) :] == eos).all()  # EOS padding
    assert (batch["labels"] == eos).sum(dim=1).tolist() == [2, 1]
    trained = [sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows]
    assert TokenLogProbs.mask(batch).sum(dim=1).tolist() == trained


def test_chat_tuned_gpt2_stops_on_its_end_of_turn(gpt2):
    tokenizer = load_tokenizer(gpt2)
    model = load_model(gpt2, tokenizer)
    assert tokenizer.eos_token_id in stop_token_ids(model, tokenizer)
    batch = collate([chat_row(tokenizer, [QUESTION, ANSWER])], tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    [generation] = generate(model, tokenizer, [[QUESTION]], max_new_tokens=16, temperature=0)
    assert generation.finished and generation.response_ids[-1] == tokenizer.eos_token_id
    assert generation.text == ANSWER["content"]


def test_tokenizer_without_eos_gets_an_end_of_turn_token(tmp_path):
    folder = tmp_path / "no-eos"
    tokenizer = FastTokenizer(tokenizer_object=_bpe([]))
    assert tokenizer.eos_token is None and CHATML_END_OF_TURN not in tokenizer.get_vocab()
    cfg = _save_with_gpt2(tokenizer, folder, eos_id=None)
    loaded = load_tokenizer(cfg)
    assert loaded.eos_token == CHATML_END_OF_TURN and loaded.pad_token == CHATML_END_OF_TURN
    assert len(loaded) == len(tokenizer) + 1
    assert loaded.chat_template == DEFAULT_CHAT_TEMPLATE
    model = load_model(cfg, loaded)
    assert model.get_input_embeddings().num_embeddings == len(loaded)
    assert loaded.eos_token_id in stop_token_ids(model, loaded)
    [run] = trained_runs(chat_row(loaded, [QUESTION, ANSWER]))
    assert run[-1] == loaded.eos_token_id and run.count(loaded.eos_token_id) == 1
    assert loaded.decode(run) == "Two plus two is four.<|im_end|>"


def test_rendering_needs_a_token_to_end_turns(tmp_path):
    tokenizer = FastTokenizer(tokenizer_object=_bpe([]))
    with pytest.raises(ValueError, match="nothing can end a turn"):
        render_messages(tokenizer, [QUESTION])
