"""Tiny Llama-architecture models and BPE tokenizers built locally, for tests, demos and the lab.

Nothing here downloads: the tokenizer is trained with `tokenizers` on the given texts and the
model is initialised from a `LlamaConfig`. Both are saved as a plain HF folder, so every
other part of alignlab loads them with `from_pretrained` exactly as it loads a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignlab.data.templates import DEFAULT_CHAT_TEMPLATE
from alignlab.fileio import atomic_folder

SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>"]


def train_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: list[str] = SPECIAL_TOKENS
) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts` (special tokens first)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens and the default chat template."""
    tokenizer = train_bpe(texts, vocab_size)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    wrapped.chat_template = DEFAULT_CHAT_TEMPLATE
    return wrapped


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
) -> LlamaConfig:
    """A small Llama config; defaults give a model of a few hundred thousand parameters."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rms_norm_eps=1e-5,
    )


def set_chat_stop_tokens(model: Any, tokenizer: PreTrainedTokenizerFast) -> None:
    """Generation stops at EOS or at the end of a ChatML turn (`<|im_end|>`), pads with pad."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]


def build_tiny_model(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    config: LlamaConfig | None = None,
    seed: int = 0,
) -> Path:
    """Initialise a Llama model for `tokenizer` and save both as an HF folder (atomically)."""
    config = config or tiny_llama_config(len(tokenizer))
    config.vocab_size = len(tokenizer)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    set_chat_stop_tokens(model, tokenizer)
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
