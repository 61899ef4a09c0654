"""Chain of Hindsight: SFT on preference pairs rewritten as feedback-annotated sequences.

Each pair (x, y_w, y_l) becomes  x \\n P1 R1 \\n P2 R2  with "A helpful answer:" before y_w and
"An unhelpful answer:" before y_l (order per pair drawn at random, as in the paper), trained
with the SFT loss on R1 and R2 only (`alignlab.data.preference.chain_of_hindsight` gives the
exact template). At inference, condition on `hindsight_prompt(x)` = x \\n "A helpful answer:":
the final folder's chat template does this itself (`hindsight_chat_template`), so evaluation,
serving and `apply_chat_template(..., add_generation_prompt=True)` condition on the positive
feedback with no extra step (string prompts: call `hindsight_prompt` yourself).

    loss = - Σ_{response tokens} log π(token | ...) / N_step     (the SFT recipe, unchanged)

Liu, Sferrazza & Abbeel 2023, arXiv:2302.02676. The rewritten examples are written as a
prompt-completion (or conversational) JSONL file in the output folder, each record carrying
the `source` file:line of its pair, and the SFT recipe trains on it: same loop, resume,
FSDP2, checkpoints and metrics. docs/methods/coh.md.

Run: `alignlab coh model.path=... data.path=pairs.jsonl` (torchrun works as for SFT).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from alignlab.config import DataConfig, ModelConfig, TrainConfig, option, section
from alignlab.data.hindsight import NEGATIVE, POSITIVE, chain_of_hindsight, hindsight_chat_template
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, detect_dataset_format, parse_examples
from alignlab.data.sources import load_records
from alignlab.fileio import atomic_write_text
from alignlab.recipes import sft
from alignlab.training import distributed, loop


@dataclasses.dataclass
class CoHConfig:
    """Chain of Hindsight: SFT on preference pairs annotated with feedback phrases."""

    model: ModelConfig = section(ModelConfig, "the model to fine-tune")
    data: DataConfig = section(DataConfig, "preference pairs (prompt?, chosen, rejected)")
    train: TrainConfig = section(
        TrainConfig, "optimisation loop (the SFT recipe's)", output_dir="runs/coh"
    )
    positive: str = option(POSITIVE, "feedback phrase before the chosen response")
    negative: str = option(NEGATIVE, "feedback phrase before the rejected response")
    order: str = option(
        "random", "which response comes first in a sequence (random per pair: the paper)",
        choices=("random", "positive_first", "negative_first", "both"),
    )  # fmt: skip
    chat_conditioning: bool = option(
        True,
        "save the final model with a chat template that appends the positive phrase to the "
        "generation prompt (inference conditioned on positive feedback, as in the paper)",
    )
    final_dir: str = option("", "where the final model goes; empty = <output_dir>/final")


def condition_chat_template(folder: Path, positive: str) -> None:
    """Give the HF folder's chat template the positive phrase (`hindsight_chat_template`),
    rewriting only the tokenizer files, each by an atomic rename."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not isinstance(tokenizer.chat_template, str):
        print(f"{folder}: no single chat template to condition; prompt with hindsight_prompt(x)")
        return
    tokenizer.chat_template = hindsight_chat_template(tokenizer.chat_template, positive)
    with tempfile.TemporaryDirectory(prefix=".coh-tokenizer-", dir=folder.parent) as tmp:
        tokenizer.save_pretrained(tmp)
        for path in Path(tmp).iterdir():
            os.replace(path, folder / path.name)


def hindsight_records(cfg: CoHConfig, path: str) -> tuple[list[dict], DataReport]:
    """The CoH examples of the pairs in `path` as JSONL-ready records (prompt, completion,
    source), with the report of reading the pairs."""
    data = cfg.data
    report = DataReport(truncation=data.truncation)
    records = load_records(
        path, data.split, data.max_examples, on_bad_example=data.on_bad_example, report=report
    )
    if not records:
        raise DataError(f"no records ({report.summary()})", path)
    fmt = data.format if data.format != "auto" else detect_dataset_format(records)
    if fmt != "preference":
        raise DataError(
            f"this is {fmt} data; Chain of Hindsight needs preference pairs "
            "(keys 'prompt'?+'chosen'+'rejected')",
            path,
        )
    _, examples = parse_examples(records, fmt, data.on_bad_example, report)
    annotated = chain_of_hindsight(
        examples, cfg.positive, cfg.negative, order=cfg.order, seed=cfg.train.seed
    )
    out = [
        {"prompt": e.prompt, "completion": e.completion, "source": e.record.where()}
        for e in annotated
    ]
    return out, report


def run(cfg: CoHConfig) -> Path:
    """Rewrite the pairs, then train with the SFT recipe; return the final model folder."""
    runtime = distributed.init_runtime()
    folder = loop.start_run(cfg, runtime)  # the folder holds a coh run; its SFT is a stage
    output_dir = Path(cfg.train.output_dir)
    files = {"path": output_dir / "coh_train.jsonl"}
    sources = {"path": cfg.data.path}
    if cfg.data.eval_path:
        files["eval_path"] = output_dir / "coh_eval.jsonl"
        sources["eval_path"] = cfg.data.eval_path
    # every process reads the pairs (so a data error stops all of them); rank 0 writes
    rewritten = {key: hindsight_records(cfg, source) for key, source in sources.items()}
    folder.claim()
    if runtime.is_main:
        for key, (records, report) in rewritten.items():
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            atomic_write_text(files[key], text)
            print(f"chain of hindsight: {sources[key]}: {report.summary()} -> {len(records)} "
                  f"SFT examples in {files[key]}")  # fmt: skip
    distributed.barrier(runtime)
    data = dataclasses.replace(
        cfg.data, format="auto", max_examples=0, **{k: str(v) for k, v in files.items()}
    )
    sft_cfg = sft.SFTConfig(model=cfg.model, data=data, train=cfg.train, final_dir=cfg.final_dir)
    final = Path(sft.run(sft_cfg, parent=folder))
    if cfg.chat_conditioning and runtime.is_main:
        condition_chat_template(final, cfg.positive)
    return final
