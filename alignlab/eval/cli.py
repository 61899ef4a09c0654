"""`alignlab eval`: sample from a model, measure what needs no gold, write a report.

    alignlab eval --model runs/sft/final --ref base-model --prompts data/prompts.jsonl \\
        --out runs/eval --reward mypkg.rewards:helpfulness

Reports response length, fraction finished, distinct-1/2, KL to `--ref`, and the mean of each
`--reward module:function` (a callable (prompt, response) -> float; `module` may also be a
path to a .py file). With a reward and a reference it also gives the win rate against the
reference by the first reward.

Prompts come from any dataset `alignlab.data.load_records` reads: the `prompt` field (string
or message list), else the conversation of `messages` before its last assistant turn, else the
shared prefix of `chosen` / `rejected`. The record's other scalar fields become the prompt's
meta (e.g. "family").
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.data.schema import DataError, extract_prompt
from alignlab.data.sources import Record, load_records
from alignlab.eval.harness import EvalPrompt, evaluate_many
from alignlab.eval.report import markdown_table, write_report

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


def resolve_callable(spec: str) -> Callable[..., Any]:
    """`module:function` (dotted attribute allowed) or `path/to/file.py:function`."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--reward {spec!r}: expected module:function")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"--reward {spec!r}: no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"_alignlab_reward_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--reward {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--reward {spec!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--reward {spec!r} is not callable")
    return target


def _reward_fns(specs: list[str]) -> dict[str, Callable[..., Any]]:
    names = [spec.rpartition(":")[2] for spec in specs]
    return {
        (name if names.count(name) == 1 else spec): resolve_callable(spec)
        for name, spec in zip(names, specs)
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignlab eval",
        description="Sample from a model and report length, diversity, finished rate, KL to a "
        "reference and reward callables, with confidence intervals.",
    )
    parser.add_argument("--model", required=True, help="model folder or hub id")
    parser.add_argument("--ref", help="reference model (same tokenizer) for KL and win rate")
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
    prompts = load_prompts(args.prompts, args.split, args.max_prompts)
    reward_fns = _reward_fns(args.reward)
    name = Path(args.model).name or args.model
    results = evaluate_many(
        {name: args.model},
        prompts,
        ref_dir=args.ref,
        reward_fns=reward_fns or None,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    title = args.title or f"Evaluation of {args.model}"
    paths = write_report(results, args.out, title)
    print(markdown_table(results), end="")
    print(f"report: {paths['markdown']} ({paths['html'].name}, {paths['json'].name})")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
