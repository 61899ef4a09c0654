"""K sampled responses per prompt from a policy: the raw material every feedback loop labels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from alignlab.data.templates import Messages
from alignlab.models.generation import generate


def sample_k(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    k: int,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int = 1,
) -> list[list[str]]:
    """K samples per prompt (`alignlab.models.generation.generate`), in the prompts' order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gens = generate(
        model, tokenizer, [p for p in prompts for _ in range(k)],
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    return [[gens[i * k + j].text for j in range(k)] for i in range(len(prompts))]


def sample_k_from(
    model_dir: str | Path, prompts: Sequence[str | Messages], k: int, **kw: Any
) -> list[list[str]]:
    """`sample_k` of the model in a folder (or hub id), loaded for inference, on the GPU if
    any."""
    from alignlab.eval.harness import load_for_eval

    loaded = load_for_eval(str(model_dir))
    return sample_k(loaded.model, loaded.tokenizer, prompts, k, **kw)


def write_samples(path: Path, rows: Sequence[Any], samples: Sequence[Sequence[str]]) -> None:
    """A samples file: one JSONL row {**row.extras, prompt, responses} per prompt row
    (`alignlab.rl.prompts.PromptRow`), written atomically; `read_samples` reads it back."""
    from alignlab.fileio import write_jsonl

    write_jsonl(
        path,
        [{**r.extras, "prompt": r.prompt, "responses": list(s)} for r, s in zip(rows, samples)],
    )


def read_samples(path: Path) -> tuple[list, list[list[str]], list[dict]]:
    """(prompts, responses per prompt, the other keys of each row) of a samples file: JSONL
    rows {prompt, responses, **extras}, as the AI-feedback recipes write them."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    extras = [{k: v for k, v in r.items() if k not in ("prompt", "responses")} for r in rows]
    return [r["prompt"] for r in rows], [r["responses"] for r in rows], extras
