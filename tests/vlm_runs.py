"""Shared pieces of the vision-language tests: a tiny LLaVA with a tiny shapes export, which
part of a LLaVA each tensor belongs to, what a run changed, and its logged metrics."""

import json

import torch
from transformers import AutoModelForImageTextToText

from alignlab.models.vlm_tiny import build_tiny_llava


def tiny_vlm_world(root, n_train=8):
    """(tiny LLaVA folder with 32-px images, shapes export folder of `n_train` train images)
    under `root`; torch on one thread (the tests run beside others)."""
    from alignlab.lab.shapes.export import export_shapes  # the lab in tests only

    torch.set_num_threads(1)
    model = build_tiny_llava(root / "tiny-llava", image_size=32)
    export_shapes(root / "shapes", n_train=n_train, n_valid=0, n_heldout=0, image_size=64)
    return model, root / "shapes"


def part(name):
    """The part a state-dict name is in, for LLaVA and the families of tests/vlm_families.py
    (the projector first: Qwen2-VL's merger sits in its tower)."""
    if any(key in name for key in ("multi_modal_projector", "merger", "connector")):
        return "projector"
    if any(key in name for key in ("vision_tower", "visual", "vision_model")):
        return "tower"
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
