"""Fixtures for the data tests: small byte-level BPE tokenizers trained locally (no network)."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from alignlab.data.templates import ensure_chat_template
from alignlab.models.tiny import train_bpe

SAMPLE = Path(__file__).resolve().parents[2] / "alignlab" / "data" / "samples" / "sft_sample.jsonl"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def _corpus() -> list[str]:
    lines = []
    for raw in SAMPLE.read_text().splitlines():
        for message in json.loads(raw)["messages"]:
            lines.append(message["content"])
    lines += [f"The sky is blue number {i}. What color is the sky? It is green." for i in range(50)]
    lines += ["user", "assistant", "system", "prompt completion text"]
    return lines


@pytest.fixture(scope="session")
def bpe() -> Tokenizer:
    return train_bpe(_corpus(), 500, SPECIAL_TOKENS)


@pytest.fixture(scope="session")
def tokenizer(bpe):
    """No BOS, EOS <|endoftext|>, pad <pad>, ChatML template (as a Qwen-style tokenizer)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bpe.to_str()),
        eos_token="<|endoftext|>",
        pad_token="<pad>",
    )
    ensure_chat_template(tok)
    return tok


@pytest.fixture(scope="session")
def bos_tokenizer(bpe):
    """Like `tokenizer` but with a BOS `<s>` its post-processor adds (as a Llama-style one)."""
    inner = Tokenizer.from_str(bpe.to_str())
    inner.add_special_tokens(["<s>"])
    bos_id = inner.token_to_id("<s>")
    inner.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<pad>"
    )
    ensure_chat_template(tok)
    return tok


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """alignlab/data/samples/sft_sample.jsonl"""
    return SAMPLE


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(records_or_lines, name="train.jsonl") -> path; str items are raw lines."""

    def write(items, name="train.jsonl"):
        path = tmp_path / name
        lines = [item if isinstance(item, str) else json.dumps(item) for item in items]
        path.write_text("".join(line + "\n" for line in lines))
        return str(path)

    return write
