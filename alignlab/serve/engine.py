"""A served model: its weights, tokenizer and scheduler, and how prompts become jobs.

    served = load_served("tiny", "runs/sft/final", max_batch=32, max_queue=256)
    ids = served.encode([{"role": "user", "content": "Hi"}])    # the chat template, as training
    served.scheduler.submit([Job(ids, max_tokens=64, seed=1)])

Prompts are rendered and tokenized exactly as `alignlab.models.generation.generate` does
(`render_prompt` + `prompt_token_ids`), so the server and the offline sampler give the model
the same tokens. `ServedModel.generate` is the blocking form a strategy's `Backend` calls from
its worker thread: its samples go to the same scheduler as everyone's requests.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.config import ModelConfig
from alignlab.data.templates import Messages, render_prompt
from alignlab.icl.base import Sampling, derived_seed
from alignlab.models.folders import check_model_source
from alignlab.models.generation import Generation, prompt_token_ids
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.serve.scheduler import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_TIMEOUT,
    Job,
    Scheduler,
)


class RequestAborted(Exception):
    """A strategy's inner samples ended without an answer (cancelled, timed out, failed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ServedModel:
    name: str
    path: str
    model: nn.Module
    tokenizer: Any
    scheduler: Scheduler
    context_length: int | None
    """max_position_embeddings: a prompt and its max_tokens must fit in it."""
    created: int

    def encode(self, prompt: str | Messages | list[int]) -> tuple[str, list[int]]:
        """(prompt text, token ids) as `generate` builds them; token ids are taken as given."""
        with self.scheduler.tokenizer_lock:
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                return self.tokenizer.decode(prompt, skip_special_tokens=False), list(prompt)
            text = render_prompt(self.tokenizer, prompt)
            return text, prompt_token_ids(self.tokenizer, text)

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def generate(
        self,
        prompts: Sequence[str | Messages],
        sampling: Sampling,
        seeds: Sequence[int],
        cancel: Any,
        deadline: float | None,
    ) -> list[Generation]:
        """One Generation per prompt through the scheduler, blocking (a strategy's sampler).
        The request was admitted already, so its inner samples wait for queue room rather
        than fail; they end early when `cancel` is set or `deadline` passes."""
        encoded = [self.encode(prompt) for prompt in prompts]
        jobs = []
        for index, ((_, ids), seed) in enumerate(zip(encoded, seeds)):
            room = (
                self.context_length - len(ids) if self.context_length else sampling.max_new_tokens
            )
            if room < 1:
                raise RequestAborted(
                    FINISH_ERROR, f"a strategy's prompt of {len(ids)} tokens fills the context"
                )
            jobs.append(
                Job(
                    ids,
                    min(sampling.max_new_tokens, room),
                    sampling.temperature,
                    sampling.top_p,
                    seed,
                    tuple(sampling.stop),
                    cancel=cancel,
                    deadline=deadline,
                    index=index,
                )
            )
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        self.scheduler.submit(jobs, block=True, timeout=wait)
        for job in jobs:
            job.done.wait(None if deadline is None else max(deadline - time.monotonic(), 0) + 5)
        generations = []
        for (text, ids), job in zip(encoded, jobs):
            if job.finish_reason in (None, FINISH_CANCELLED, FINISH_TIMEOUT, FINISH_ERROR):
                reason = job.finish_reason or FINISH_TIMEOUT
                raise RequestAborted(reason, job.error or f"inner sample {reason}")
            generations.append(
                Generation(
                    prompt_text=text,
                    prompt_ids=ids,
                    response_ids=list(job.tokens),
                    text=job.text,
                    finished=job.finish_reason == "stop",
                )
            )
        return generations


MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 256 << 20


def tune_malloc() -> bool:
    """Make glibc's malloc keep freed buffers up to 32 MiB for reuse (whether it did).

    Each decode step allocates and frees the same few buffers, many above glibc's initial
    128 KiB mmap threshold (32 rows' logits at a 32,000-token vocabulary are 4 MiB, their
    float64 cumulative sums 8 MiB): glibc then maps them, and unmaps or trims them on free, so
    every step takes hundreds of page faults, each zeroing a fresh page (15-30% of a step at 8
    to 32 rows on a CPU). With the mmap threshold at its maximum (32 MiB) and the trim
    threshold at 256 MiB, they come from the heap and its freed pages are kept. A
    process-wide setting, for the server's process only (`alignlab serve`); nothing is
    changed where glibc is not the C library, or where the MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ environment variables already choose."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(
        mallopt(m_trim_threshold, TRIM_THRESHOLD)
    )


def choice_seeds(seed: int, n: int) -> list[int]:
    """Choice k's seed: the request's seed for k = 0 (so n=1 samples what `generate(...,
    seeds=[seed])` samples), `derived_seed(seed, k)` for the others."""
    return [seed if k == 0 else derived_seed(seed, k) for k in range(n)]


def load_served(
    name: str,
    path: str | Path,
    max_batch: int = 32,
    max_queue: int = 256,
    max_prefill_tokens: int = 8192,
    dtype: str = "fp32",
    device: str | None = None,
    field: str = "model",
) -> ServedModel:
    """Load a model folder (or hub id) with alignlab's loading and start its scheduler. A path
    that cannot be loaded raises a one-line ConfigError / UserInputError naming `field`."""
    source = str(path)
    check_model_source(source, field, tokenizer=True)
    cfg = ModelConfig(path=source, dtype=dtype)
    tokenizer = load_tokenizer(cfg)  # a fallback ChatML template when the folder has none
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(cfg, tokenizer, device=target)
    model.eval()
    return served_from(name, source, model, tokenizer, max_batch, max_queue, max_prefill_tokens)


def served_from(
    name: str,
    path: str,
    model: nn.Module,
    tokenizer: Any,
    max_batch: int = 32,
    max_queue: int = 256,
    max_prefill_tokens: int = 8192,
) -> ServedModel:
    """A ServedModel around a model already loaded (tests share one between servers)."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None) if config is not None else None
    scheduler = Scheduler(model, tokenizer, max_batch, max_queue, max_prefill_tokens, name=name)
    return ServedModel(
        name=name,
        path=path,
        model=model,
        tokenizer=tokenizer,
        scheduler=scheduler.start(),
        context_length=int(context) if context else None,
        created=int(time.time()),
    )
