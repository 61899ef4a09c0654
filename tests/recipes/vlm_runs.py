"""Shared pieces of the vision-language recipe tests: which part of a LLaVA each tensor
belongs to, what a run changed, and its logged metrics."""

import json

import torch
from transformers import AutoModelForImageTextToText


def part(name):
    if "vision_tower" in name:
        return "tower"
    if "multi_modal_projector" in name:
        return "projector"
    return "llm"


def changed_parts(start, final):
    """{part: whether any of its tensors differs} between two model folders."""
    a = AutoModelForImageTextToText.from_pretrained(start).state_dict()
    b = AutoModelForImageTextToText.from_pretrained(final).state_dict()
    assert a.keys() == b.keys()
    changed = {"tower": False, "projector": False, "llm": False}
    for name, tensor in a.items():
        changed[part(name)] |= not torch.equal(tensor, b[name])
    return changed


def metric_rows(out, key="train/loss"):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if key in r]


def same_weights(a, b):
    x = AutoModelForImageTextToText.from_pretrained(a).state_dict()
    y = AutoModelForImageTextToText.from_pretrained(b).state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
