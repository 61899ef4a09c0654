"""`alignlab eval`: sample from a model, measure what needs no gold, write a report.

    alignlab eval --model runs/sft/final --ref base-model --prompts data/prompts.jsonl \\
        --out runs/eval --reward mypkg.rewards:helpfulness

Reports response length, fraction finished, distinct-1/2, KL to `--ref`, and the mean of each
`--reward module:function` (a callable (prompt, response) -> float; `module` may also be a
path to a .py file). With a reward and a reference it also compares the model with the
reference's own samples on the same prompts and sampling seeds, by the first reward: the mean
per-prompt difference with its paired t and bootstrap intervals, the per-prompt win rate
(Wilson) and whether the difference is separated from 0 (`alignlab.eval.paired`).

Prompts come from any dataset `alignlab.data.load_records` reads: the `prompt` field (string
or message list), else the conversation of `messages` before its last assistant turn, else the
shared prefix of `chosen` / `rejected`. The record's other scalar fields become the prompt's
meta (e.g. "family").
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignlab.callables import resolve_callable
from alignlab.config import ArgumentParser, ConfigError
from alignlab.data.schema import DataError, Record, extract_prompt
from alignlab.data.sources import load_records
from alignlab.eval.harness import EvalOptions, EvalPrompt, evaluate_many
from alignlab.eval.report import markdown_table, write_report
from alignlab.eval.verdict import verdict_of_results
from alignlab.models.folders import check_model_source

_PROMPT_KEYS = ("prompt", "messages", "chosen", "rejected", "completion", "responses")


def prompt_of(record: Record) -> EvalPrompt:
    """The prompt of one record (see the module docstring); a DataError when it has none."""
    data = record.data
    meta = {
        k: v
        for k, v in data.items()
        if k not in _PROMPT_KEYS and isinstance(v, (str, int, float, bool))
    }
    prompt: Any = data.get("prompt")
    if prompt is None and isinstance(data.get("messages"), list):
        messages = data["messages"]
        last = max(
            (
                i
                for i, m in enumerate(messages)
                if isinstance(m, dict) and m.get("role") == "assistant"
            ),
            default=len(messages),
        )
        prompt = messages[:last]
    if prompt is None and "chosen" in data and "rejected" in data:
        prompt, _, _ = extract_prompt(data["chosen"], data["rejected"])
    if isinstance(prompt, str) and prompt.strip():
        return EvalPrompt(prompt, meta)
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        if all("role" in m and "content" in m for m in prompt):
            return EvalPrompt(prompt, meta)
    raise DataError(
        "no prompt: expected a non-empty 'prompt' (string or message list), 'messages' with "
        "turns before the last assistant turn, or 'chosen' + 'rejected' with a shared prefix",
        record.source,
        record.line,
        field="prompt",
    )


def load_prompts(path: str, split: str = "train", max_prompts: int = 0) -> list[EvalPrompt]:
    """EvalPrompts of every record of a dataset file, folder or hub id."""
    records = load_records(path, split, max_prompts)
    if not records:
        raise DataError("no records", path)
    return [prompt_of(record) for record in records]


def _reward_fns(specs: list[str]) -> dict[str, Callable[..., Any]]:
    names = [spec.rpartition(":")[2] for spec in specs]
    fns = {}
    for name, spec in zip(names, specs):
        fn = resolve_callable(spec)
        try:
            inspect.signature(fn).bind(None, None)
        except TypeError as err:
            raise ConfigError(
                f"--reward={spec}: cannot be called as fn(prompt, response) -> float ({err})"
            ) from None
        except ValueError:  # no signature to check
            pass
        fns[name if names.count(name) == 1 else spec] = fn
    return fns


def _check_device(device: str | None, field: str = "--device") -> None:
    """ConfigError when `device` (e.g. "cuda:1") is not on this machine; None means auto."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"{field}={device}: not a device name (cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{field}={device}: this machine has no CUDA device")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"{field}={device}: this machine has {count} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{field}={device}: MPS is not available on this machine")


EVAL_MODES = """alignlab eval has two modes:

  alignlab eval --model DIR [--ref DIR] --prompts FILE [--reward MODULE:FUNCTION ...]
      your prompts and reward callables: length, diversity, finished rate, KL to the
      reference, each reward with its interval, and the paired comparison with the
      reference by the first reward (alignlab eval --prompts FILE --help)
  alignlab eval --model [NAME=]DIR ... [--ref DIR]
      without --prompts: the lab's heldout prompts, scored by its gold; several models
      share the prompts and sampling seeds (alignlab eval --help)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="alignlab eval",
        description="Sample from a model and report length, diversity, finished rate, KL to a "
        "reference and reward callables, with confidence intervals.",
        epilog=EVAL_MODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model folder or hub id")
    parser.add_argument(
        "--ref", help="reference model (same tokenizer): KL, and with --reward a paired comparison"
    )
    parser.add_argument("--prompts", required=True, help="prompt dataset (JSONL, JSON, ...)")
    parser.add_argument("--split", default="train", help="split of a DatasetDict or hub dataset")
    parser.add_argument("--max-prompts", type=int, default=0, help="first N prompts (0: all)")
    parser.add_argument("--out", default="runs/eval", help="report folder (default runs/eval)")
    parser.add_argument("--title", default="", help="report title")
    parser.add_argument("--num-samples", type=int, default=1, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if any)")
    parser.add_argument(
        "--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="weight dtype"
    )
    parser.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="a callable (prompt, response) -> float; repeat for several",
    )
    return parser


def main(argv: list[str]) -> None:
    """Run `alignlab eval` with `argv` (without the leading 'eval')."""
    args = build_parser().parse_args(argv)
    check_model_source(args.model, "--model", tokenizer=True)
    if args.ref:
        check_model_source(args.ref, "--ref", tokenizer=True)
    _check_device(args.device)
    reward_fns = _reward_fns(args.reward)
    prompts = load_prompts(args.prompts, args.split, args.max_prompts)
    name = Path(args.model).name or args.model
    results = evaluate_many(
        {name: args.model},
        prompts,
        ref_dir=args.ref,
        reward_fns=reward_fns or None,
        options=EvalOptions(
            num_samples=args.num_samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            batch_size=args.batch_size,
            seed=args.seed,
        ),
        device=args.device,
        dtype=args.dtype,
    )
    title = args.title or f"Evaluation of {args.model}"
    lines = verdict_of_results(results)
    paths = write_report(results, args.out, title, verdict=lines)
    print(markdown_table(results), end="")
    for line in lines:
        print(line)
    print(f"report: {paths['markdown']} ({paths['html'].name}, {paths['json'].name})")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
