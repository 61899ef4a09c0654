"""Evaluate a vision-language model in the shapes world: accuracy per question type, POPE,
CHAIR, gold score and KL to a reference, on an export's valid or heldout prompts.

    result = evaluate_vlm("runs/vlm_dpo/final", "shapes_data/", ref="runs/vlm_sft2/final")
    results = evaluate_vlms({"stage 1": S1, "stage 2": S2, "DPO": D, "GRPO": G}, "shapes_data/",
                            ref=S2, baseline="stage 2")
    print(results_table(results)); answers_figure("shapes_data/", answers, "answers.png")

Each prompt of `<export>/<split>_prompts.jsonl` (`alignlab.lab.shapes.export`) is answered once
(`alignlab.models.vlm_generation.generate_vlm`) with a sampling seed that is a function of the
prompt, its image and the eval seed (`alignlab.eval.harness.sampling_seeds`), so every model
samples a prompt with the same random numbers and paired differences are free of the noise
the draws share. Answers are scored by `gold_score`. Reported, each from those answers:

- accuracy overall and per question type (Wilson intervals), mean gold score (t interval);
- POPE (Li et al. 2023, arXiv 2305.10355) on the "exists" questions, "yes" the positive class:
      accuracy = (TP + TN) / n    precision = TP / (TP + FP)    recall = TP / (TP + FN)
      F1 = 2 TP / (2 TP + FP + FN)    yes-ratio = (TP + FP) / n
  overall and per POPE setting (random / popular / adversarial: the present-object questions
  with that setting's absent ones, as POPE pairs one positive set with each negative set);
- CHAIR (Rohrbach et al. 2018, arXiv 1809.02156; `gold.summarise`): CHAIR_i, hallucinated
  over mentioned objects pooled over answers, and CHAIR_s, the share of answers with a
  hallucinated object, on the caption / instruction answers and over all answers;
- with a reference: KL(π || π_ref) = mean over prompts of log π(y|x) - log π_ref(y|x), the
  sequence log-probs of the policy's own answer under both models (teacher forced, each after
  its own rendering of the prompt and the same image): the k1 estimator of
  `alignlab.eval.stats.kl_estimate`, as the text lab's evaluation (`alignlab.eval.harness`).
  It is KL of the sampled distribution only at temperature 1, top_p 1 (the default; other
  settings mark it `exact_sampling: false`). A reference given as the model's own folder is
  the same loaded model and the KL is exactly 0.

How we differ from POPE: its parser calls an answer "no" when it contains "no" or "not" and
"yes" otherwise, so a hedge counts as yes; ours (`gold.yes_no`) leaves a hedge or an
unparsable answer unanswered, a wrong answer and not a "yes" (counted in `unanswered`).
POPE's objects are COCO categories; ours are colour-kind pairs (`alignlab.lab.shapes.text`).
POPE and CHAIR evaluate greedy answers; we sample at temperature 1 by default so that KL and
gold are of one distribution (`temperature=0` gives greedy answers).
"""

from __future__ import annotations

import gc
import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from alignlab.config import ConfigError, ModelConfig
from alignlab.data.schema import DataError, Record
from alignlab.data.sources import load_records
from alignlab.data.vlm import VlmRow, load_images
from alignlab.eval.harness import LoadedModel, check_same_vocab, same_folder, sampling_seeds
from alignlab.eval.paired import paired_comparison
from alignlab.eval.report import figure_png
from alignlab.eval.stats import kl_estimate, mean_ci, proportion_ci
from alignlab.fileio import atomic_write_bytes, write_jsonl
from alignlab.lab.shapes.gold import ShapesGold, gold_score, summarise
from alignlab.lab.shapes.text import (
    DESCRIPTIVE_TYPES,
    POPE_STRATEGIES,
    QUESTION_TYPES,
    ShapesPrompt,
)
from alignlab.lab.world import SPLITS
from alignlab.models.vlm import load_vlm
from alignlab.models.vlm_generation import generate_vlm, vlm_sequence_logps

logger = logging.getLogger(__name__)

PAIRED_BY = ("correct", "score", "hallucinated")
"""Per-answer numbers a paired comparison of two models reports (`paired_answers`)."""


# --- POPE ------------------------------------------------------------------------------------


def pope_metrics(predictions: Sequence[str | None], labels: Sequence[str]) -> dict[str, Any]:
    """POPE's numbers (module docstring) from yes / no answers (None: unanswered, neither a yes
    nor a no) against yes / no labels. Undefined ratios (no predicted or no true "yes") are
    None; with no questions every rate is None."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not set(labels) <= {"yes", "no"} or not set(predictions) <= {"yes", "no", None}:
        raise ValueError("labels must be 'yes' / 'no', predictions 'yes' / 'no' / None")
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and y == "yes" for p, y in pairs)
    fp = sum(p == "yes" and y == "no" for p, y in pairs)
    tn = sum(p == "no" and y == "no" for p, y in pairs)
    fn = sum(p != "yes" and y == "yes" for p, y in pairs)
    n = len(pairs)

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "unanswered": sum(p is None for p in predictions),
        "accuracy": ratio(tp + tn, n),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "yes_ratio": ratio(tp + fp, n),
    }  # fmt: skip


def pope_table(answers: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """`pope_metrics` of the "exists" answers (rows of `evaluate_vlm`'s "answers"), with Wilson
    intervals of the accuracy and the yes-ratio, and per POPE setting ("by_strategy")."""
    exists = [a for a in answers if a["type"] == "exists"]

    def table(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        out = pope_metrics([a["yes_no"] for a in rows], [a["answer"] for a in rows])
        if rows:
            out["accuracy_ci"] = proportion_ci(out["tp"] + out["tn"], len(rows), confidence)
            out["yes_ratio_ci"] = proportion_ci(out["tp"] + out["fp"], len(rows), confidence)
            out["accuracy_ci"], out["yes_ratio_ci"] = (
                out["accuracy_ci"].to_dict(), out["yes_ratio_ci"].to_dict()
            )  # fmt: skip
        return out

    result = table(exists)
    present = [a for a in exists if a["pope"] == "present"]
    result["by_strategy"] = {
        strategy: table(present + absent)
        for strategy in POPE_STRATEGIES
        if (absent := [a for a in exists if a["pope"] == strategy])
    }
    return result


# --- prompts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportPrompt:
    """One prompt of an export: its row (image path resolved) and the scorable prompt."""

    index: int
    prompt: ShapesPrompt
    row: VlmRow
    image: str
    """The image's path as the export writes it (relative to the export folder)."""


def read_export_prompts(
    export_dir: str | Path, split: str = "heldout", n: int = 0
) -> list[ExportPrompt]:
    """The first `n` (0: all) prompts of `<export_dir>/<split>_prompts.jsonl`; a bad row is a
    DataError naming the file, the line and the field."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    if n < 0:
        raise ConfigError(f"n={n}: must be 0 (all prompts) or more")
    folder = Path(export_dir).expanduser()
    path = folder / f"{split}_prompts.jsonl"
    if not path.is_file():
        raise ConfigError(
            f"export_dir={export_dir}: no {path.name}; write one with "
            "`alignlab lab export --world shapes --out FOLDER`"
        )
    prompts = []
    for index, record in enumerate(load_records(str(path), max_records=n)):
        prompt, image = _parse(record)
        row = VlmRow(messages=[prompt.user_turn()], images=[folder / image], record=record)
        prompts.append(ExportPrompt(index, prompt, row, image))
    if not prompts:
        raise ConfigError(f"export_dir={export_dir}: {path.name} has no prompts")
    return prompts


def _parse(record: Record) -> tuple[ShapesPrompt, str]:
    images = record.data.get("images")
    if not (isinstance(images, list) and len(images) == 1 and isinstance(images[0], str)):
        raise DataError("must be a list of one image path", field="images").at(record)
    try:
        prompt = ShapesPrompt.from_record(record.data)
    except (KeyError, TypeError, ValueError, StopIteration) as err:
        raise DataError(
            f"not a shapes prompt row ({type(err).__name__}: {err})", field="prompt"
        ).at(record) from err
    if prompt.type not in QUESTION_TYPES:
        raise DataError(f"unknown question type {prompt.type!r}", field="type").at(record)
    return prompt, images[0]


# --- evaluation ------------------------------------------------------------------------------

Model = str | Path | tuple[nn.Module, Any]
"""A model folder (or hub id), or an already loaded (model, processor)."""


def load_vlm_for_eval(
    model: Model, device: str | torch.device | None = None, dtype: str = "fp32"
) -> tuple[nn.Module, Any, str]:
    """(model, processor, name): a folder loaded with `load_vlm` on `device` (default cuda when
    there is one), or a loaded pair as it is (named "model")."""
    if isinstance(model, tuple):
        return model[0], model[1], "model"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded, processor = load_vlm(ModelConfig(path=str(model), dtype=dtype), torch.device(device))
    return loaded.eval(), processor, Path(str(model)).name or str(model)


def same_model(a: Model, b: Model) -> bool:
    """The same loaded model, or the same folder (the reference then is the model itself)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return isinstance(a, tuple) and isinstance(b, tuple) and a[0] is b[0]
    return same_folder(a, b)


def _answer_row(item: ExportPrompt, response: str, gold: ShapesGold, generation: Any) -> dict:
    return {
        "index": item.index,
        "image": item.image,
        "type": item.prompt.type,
        "question": item.prompt.text,
        "answer": item.prompt.answer,
        "pope": item.prompt.gold.get("pope"),
        "response": response,
        "correct": gold.correct,
        "score": gold.score,
        "hallucinated": gold.hallucinated,
        "chair_i": gold.hallucination_rate,
        "recall": gold.recall,
        "yes_no": gold.details.get("yes_no"),
        "response_tokens": len(generation.response_ids),
        "finished": generation.finished,
        "logp": None,
        "ref_logp": None,
        "kl": None,
    }


def evaluate_vlm(
    model: Model,
    export_dir: str | Path,
    split: str = "heldout",
    n: int = 0,
    ref: Model | None = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    confidence: float = 0.95,
    answers_path: str | Path | None = None,
    name: str = "",
    device: str | torch.device | None = None,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """Answer the first `n` (0: all) `split` prompts of the export and measure the answers
    (module docstring). Returns a JSON-able dict: "name", "model", "ref", "split",
    "n_prompts", "settings", "accuracy", "score", "by_type" ({type: n, accuracy with its
    interval, score, recall, chair_i, chair_s}), "pope" (`pope_table`), "chair"
    ({"descriptive", "all"}: `gold.summarise`), "length", "finished", "kl" (with `ref`) and
    "answers" (one row per prompt, also written to `answers_path` as JSONL when given).
    A folder `ref` equal to the `model` folder is not loaded again."""
    items = read_export_prompts(export_dir, split, n)
    policy, processor, default_name = load_vlm_for_eval(model, device, dtype)
    prompts = [item.row.messages for item in items]
    images = [load_images(item.row) for item in items]
    keys = [{"images": [item.image], "prompt": item.row.messages} for item in items]
    seeds = sampling_seeds(keys, 1, seed)
    generations = generate_vlm(
        policy, processor, prompts, images, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, batch_size=batch_size, seeds=seeds,
    )  # fmt: skip
    golds = [gold_score(item.prompt, g.text) for item, g in zip(items, generations)]
    answers = [
        _answer_row(item, g.text, gold, g) for item, g, gold in zip(items, generations, golds)
    ]
    result: dict[str, Any] = {
        "name": name or default_name,
        "model": str(model) if not isinstance(model, tuple) else default_name,
        "ref": None,
        "split": split,
        "n_prompts": len(items),
        "settings": {
            "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
            "batch_size": batch_size, "seed": seed, "confidence": confidence, "dtype": dtype,
        },
    }  # fmt: skip
    result.update(answer_metrics(answers, golds, confidence))
    if ref is not None:
        if same_model(model, ref):
            ref_model, ref_processor, ref_name = policy, processor, default_name
        else:
            ref_model, ref_processor, ref_name = load_vlm_for_eval(ref, device, dtype)
        check_same_vocab(
            LoadedModel(policy, processor.tokenizer, result["name"]),
            LoadedModel(ref_model, ref_processor.tokenizer, ref_name),
        )
        logps = vlm_sequence_logps(policy, processor, prompts, images, generations, batch_size)
        if ref_model is policy and ref_processor is processor:
            ref_logps = logps  # the same computation on the same tokens
        else:
            ref_logps = vlm_sequence_logps(
                ref_model, ref_processor, prompts, images, generations, batch_size
            )
        for row, lp, rlp in zip(answers, logps.tolist(), ref_logps.tolist()):
            row.update(logp=lp, ref_logp=rlp, kl=lp - rlp)
        kl = kl_estimate(logps, ref_logps, confidence).to_dict()
        kl["exact_sampling"] = temperature == 1.0 and top_p == 1.0
        result["ref"] = str(ref) if not isinstance(ref, tuple) else ref_name
        result["kl"] = kl
    result["answers"] = answers
    if answers_path is not None:
        write_jsonl(answers_path, answers)
    return result


def answer_metrics(
    answers: Sequence[Mapping[str, Any]], golds: Sequence[ShapesGold], confidence: float = 0.95
) -> dict[str, Any]:
    """Accuracy, score, per-type table, POPE, CHAIR, length and finished rate of scored
    answers (`evaluate_vlm`'s rows and their gold verdicts, in the same order)."""
    n = len(answers)
    by_type: dict[str, Any] = {}
    for kind in QUESTION_TYPES:
        members = [i for i, a in enumerate(answers) if a["type"] == kind]
        if not members:
            continue
        summary = summarise([golds[i] for i in members])
        correct = sum(answers[i]["correct"] for i in members)
        by_type[kind] = {
            "n": len(members),
            **summary,
            "accuracy": proportion_ci(correct, len(members), confidence).to_dict(),
        }
    descriptive = [g for a, g in zip(answers, golds) if a["type"] in DESCRIPTIVE_TYPES]
    return {
        "accuracy": proportion_ci(sum(a["correct"] for a in answers), n, confidence).to_dict(),
        "score": mean_ci([a["score"] for a in answers], confidence).to_dict(),
        "by_type": by_type,
        "pope": pope_table(answers, confidence),
        "chair": {
            "descriptive": {"n": len(descriptive), **summarise(descriptive)}
            if descriptive
            else None,
            "all": {"n": n, **summarise(golds)},
        },
        "length": mean_ci([a["response_tokens"] for a in answers], confidence).to_dict(),
        "finished": proportion_ci(sum(a["finished"] for a in answers), n, confidence).to_dict(),
    }


def evaluate_vlms(
    models: Mapping[str, Model],
    export_dir: str | Path,
    ref: Model | None = None,
    baseline: str | None = None,
    answers_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """`evaluate_vlm` for each {name: model} on the same prompts and seeds, against one
    reference loaded once (a model whose folder is the reference's is that loaded model).
    With `baseline` (one of the names) each result also has "paired": `paired_answers`
    against the baseline's answers. `answers_dir`: each model's answers as <name>.jsonl."""
    if baseline is not None and baseline not in models:
        raise ConfigError(f"baseline={baseline!r} is not one of the models {list(models)}")
    loaded_ref = None
    if ref is not None:
        model, processor, _ = load_vlm_for_eval(ref, device, dtype)
        loaded_ref = (model, processor)
    results = {}
    for name, path in models.items():
        logger.info("evaluating %s (%s)", name, path)
        model = loaded_ref if ref is not None and same_model(path, ref) else path
        answers_path = Path(answers_dir) / f"{name}.jsonl" if answers_dir is not None else None
        results[name] = evaluate_vlm(
            model, export_dir, ref=loaded_ref, name=name, answers_path=answers_path,
            device=device, dtype=dtype, **options,
        )  # fmt: skip
        results[name]["model"] = str(path) if not isinstance(path, tuple) else name
        if ref is not None:
            results[name]["ref"] = str(ref) if not isinstance(ref, tuple) else "ref"
        if torch.cuda.is_available():  # hand the model's memory back before the next one
            gc.collect()
            torch.cuda.empty_cache()
    if baseline is not None:
        confidence = options.get("confidence", 0.95)
        for result in results.values():
            result["paired"] = paired_answers(
                result["answers"], results[baseline]["answers"], baseline, confidence
            )
    return results


# --- paired comparison -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    """An answer row as `alignlab.eval.paired.paired_comparison` takes a sample."""

    prompt_index: int
    row: Mapping[str, Any]


def paired_answers(
    answers: Sequence[Mapping[str, Any]],
    baseline_answers: Sequence[Mapping[str, Any]],
    baseline: str = "",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Two models' answers to the same prompts compared pair by pair: for accuracy
    ("correct"), gold score and hallucination (CHAIR_s: "hallucinated"), the mean per-prompt
    difference (model - baseline) with paired t and bootstrap intervals, the win rate and
    "separated" (`alignlab.eval.paired.paired_comparison`), overall and per question type
    ("by_family"). The answers must be to the same prompts (index, image and question)."""
    mine = {a["index"]: a for a in answers}
    theirs = {a["index"]: a for a in baseline_answers}
    if set(mine) != set(theirs):
        raise ValueError(
            f"a paired comparison needs the same prompts: {len(mine)} answers against "
            f"{len(theirs)}, {len(set(mine) ^ set(theirs))} prompts not in both"
        )
    for index, row in mine.items():
        other = theirs[index]
        if (row["image"], row["question"]) != (other["image"], other["question"]):
            raise ValueError(f"prompt {index} differs between the two answer sets")
    types = {index: row["type"] for index, row in mine.items()}
    out = {}
    for key in PAIRED_BY:
        out[key] = paired_comparison(
            [_Answer(i, a) for i, a in mine.items()],
            [_Answer(i, a) for i, a in theirs.items()],
            lambda answer, key=key: float(answer.row[key]),
            types, baseline=baseline, by=key, confidence=confidence, same_seeds=True,
        )  # fmt: skip
    return out


# --- table and figure ------------------------------------------------------------------------


def _cell(value: Any, digits: int = 3) -> str:
    if isinstance(value, Mapping):
        value = value.get("mean")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table, one row per model: accuracy overall and per question type, POPE
    accuracy / F1 / yes-ratio, CHAIR_i and CHAIR_s of the caption and instruction answers,
    mean gold score, KL to the reference."""
    kinds = [k for k in QUESTION_TYPES if any(k in r["by_type"] for r in results.values())]
    head = ["model", "accuracy", *kinds, "POPE acc", "POPE F1", "yes-ratio", "CHAIR_i",
            "CHAIR_s", "gold", "KL"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        chair = r["chair"]["descriptive"] or {}
        cells = [
            name,
            _cell(r["accuracy"]),
            *(_cell(r["by_type"].get(k, {}).get("accuracy")) for k in kinds),
            _cell(r["pope"]["accuracy"]),
            _cell(r["pope"]["f1"]),
            _cell(r["pope"]["yes_ratio"]),
            _cell(chair.get("chair_i")),
            _cell(chair.get("chair_s")),
            _cell(r["score"]),
            _cell(r.get("kl"), 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _read_answers(answers: Sequence[Mapping[str, Any]] | str | Path) -> list[Mapping[str, Any]]:
    if isinstance(answers, (str, Path)):
        return [record.data for record in load_records(str(answers))]
    return list(answers)


def pick_examples(answers: Sequence[Mapping[str, Any]], n: int) -> list[int]:
    """`n` prompt indices, question types taken in turn (the first unused prompt of each)."""
    by_type: dict[str, list[int]] = {}
    for row in sorted(answers, key=lambda a: a["index"]):
        by_type.setdefault(row["type"], []).append(row["index"])
    picked: list[int] = []
    while len(picked) < n and any(by_type.values()):
        for kind in QUESTION_TYPES:
            if by_type.get(kind) and len(picked) < n:
                picked.append(by_type[kind].pop(0))
    return picked


def _printable(text: str) -> str:
    """`text` on one line, in characters every matplotlib font has (an untrained model's
    answers hold control bytes and stray scripts)."""
    shown = "".join(
        c if c.isascii() and c.isprintable() else " " if c.isspace() else "?" for c in text
    )
    return " ".join(shown.split())


def answers_figure(
    export_dir: str | Path,
    answers_by_model: Mapping[str, Sequence[Mapping[str, Any]] | str | Path],
    out_png: str | Path,
    n: int = 6,
) -> Path:
    """A PNG of `n` example prompts (question types in turn, prompts every model answered):
    each image beside its question, the gold answer and each model's answer (green when
    correct, red when not). `answers_by_model`: {name: answer rows or their JSONL file}."""
    if not answers_by_model:
        raise ValueError("answers_figure needs the answers of at least one model")
    from matplotlib.figure import Figure

    tables = {name: {a["index"]: a for a in _read_answers(rows)}
              for name, rows in answers_by_model.items()}  # fmt: skip
    shared = set.intersection(*(set(t) for t in tables.values()))
    first = next(iter(tables.values()))
    chosen = pick_examples([first[i] for i in shared], n)
    if not chosen:
        raise ValueError("the models share no answered prompt to show")
    folder = Path(export_dir).expanduser()
    figure = Figure(figsize=(10, 2.2 * len(chosen)), layout="constrained")
    grid = figure.subplots(len(chosen), 2, width_ratios=[1, 3], squeeze=False)
    for (image_ax, text_ax), index in zip(grid, chosen):
        row = first[index]
        with Image.open(folder / row["image"]) as image:
            image_ax.imshow(image.convert("RGB"))
        image_ax.set_axis_off()
        text_ax.set_axis_off()
        lines = [(f"[{row['type']}] {row['question']}", "black"),
                 (f"gold: {row['answer']}", "dimgray")]  # fmt: skip
        for name, table in tables.items():
            answer = table[index]
            said = textwrap.shorten(_printable(answer["response"]) or "(empty)", 110)
            lines.append((f"{name}: {said}", "green" if answer["correct"] else "red"))
        for k, (text, colour) in enumerate(lines):
            text_ax.text(0, 1 - k / max(len(lines), 4), text, color=colour, va="top",
                         fontsize=9, transform=text_ax.transAxes)  # fmt: skip
    out = Path(out_png)
    atomic_write_bytes(out, figure_png(figure))
    return out
