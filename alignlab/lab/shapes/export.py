"""Write the shapes world as PNG images plus JSONL files in TRL's vision dataset formats.

    images/<split>_<index>.png  one image per scene (index 00000, 00001, ...)
    sft.jsonl              {"images": ["images/train_00000.png"],
                            "messages": [user: [{"type": "image"}, {"type": "text", ...}],
                                         assistant: [{"type": "text", "text": answer}]],
                            "type", "answer", "split", "scene", "gold"}
    captions.jsonl         same layout, a caption request and the reference caption (stage-1
                           caption pairs), one per train image
    preference.jsonl       {"images", "prompt": [user], "chosen": [assistant: gold answer],
                            "rejected": [assistant: corrupted answer], "corruption", "type",
                            "answer", "split", "scene", "gold"}: another question on each
                           train image
    train_prompts.jsonl    {"images", "prompt": [user], "type", "answer", "split", "scene",
    valid_prompts.jsonl     "gold"}: `ShapesPrompt.from_record(row)` rebuilds a scorable prompt;
    heldout_prompts.jsonl   train_prompts asks another question of each train image (the RL
                            recipes' prompts, `alignlab.lab.shapes.reward:gold_reward`)
    manifest.json          world settings, palette, split sizes, row and image counts

Image paths are relative to the folder holding the JSONL files (the export folder): join
them with that folder before opening. Extra keys beside TRL's are ignored by its trainers.
Every file is written to a temporary file beside it and renamed into place; images first,
then the JSONL files, the manifest last, so a manifest means a finished export. The same
arguments give byte-identical files; images of an earlier, larger export are removed.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError
from alignlab.fileio import atomic_write_bytes, atomic_write_text, write_jsonl
from alignlab.lab.shapes.render import (
    DEFAULT_IMAGE_SIZE,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    png_bytes,
)
from alignlab.lab.shapes.spec import BACKGROUND, COLOURS
from alignlab.lab.shapes.text import ShapesPrompt, ShapesWorld, assistant_turn, corrupt

_IMAGE_NAME = re.compile(r"(train|valid|heldout)_(\d{5})\.png")


def image_path(split: str, index: int) -> str:
    """Path of a scene's image relative to the export folder."""
    return f"images/{split}_{index:05d}.png"


def export_shapes(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 2000,
    n_valid: int = 200,
    n_heldout: int = 500,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> dict[str, Path]:
    """Write the files listed in the module docstring; returns {name: path}."""
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(
            f"image_size={image_size}: must be {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} pixels"
        )
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_heldout", n_heldout)):
        if n < 0:
            raise ConfigError(f"{name}={n}: must be 0 or more")
    out = Path(out_dir)
    world = ShapesWorld(seed)
    train = world.prompts("train", n_train, stream="sft")
    splits = {
        "train": train,
        "valid": world.prompts("valid", n_valid, stream="eval"),
        "heldout": world.prompts("heldout", n_heldout, stream="eval"),
    }
    # --- images -------------------------------------------------------------------------
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for split, prompts in splits.items():
        for index, prompt in enumerate(prompts):
            atomic_write_bytes(out / image_path(split, index), png_bytes(prompt.scene, image_size))
    counts = {split: len(prompts) for split, prompts in splits.items()}
    for stale in sorted(images.iterdir()):
        match = _IMAGE_NAME.fullmatch(stale.name)
        if match and int(match[2]) >= counts[match[1]]:
            stale.unlink()
    # --- rows ---------------------------------------------------------------------------
    caption_rng = random.Random(f"alignlab-shapes/{seed}/export/captions")
    question_rng = random.Random(f"alignlab-shapes/{seed}/export/preference")
    corrupt_rng = random.Random(f"alignlab-shapes/{seed}/export/rejected")
    rl_rng = random.Random(f"alignlab-shapes/{seed}/export/rl")
    paths = [image_path("train", i) for i in range(n_train)]
    preference_types = world.type_schedule(n_train)
    tables: dict[str, list[dict[str, Any]]] = {
        "sft": [_sft_row(p, path) for p, path in zip(train, paths)],
        "captions": [
            _sft_row(world.ask(p.scene, "caption", "train", caption_rng), path)
            for p, path in zip(train, paths)
        ],
        "preference": [
            _preference_row(world.ask(p.scene, kind, "train", question_rng), path, corrupt_rng)
            for p, path, kind in zip(train, paths, preference_types)
        ],
        "train_prompts": [
            world.ask(p.scene, kind, "train", rl_rng).to_record(path)
            for p, path, kind in zip(train, paths, world.type_schedule(n_train))
        ],
    }
    for split in ("valid", "heldout"):
        tables[f"{split}_prompts"] = [
            p.to_record(image_path(split, i)) for i, p in enumerate(splits[split])
        ]
    written = {}
    for name, rows in tables.items():
        written[name] = out / f"{name}.jsonl"
        write_jsonl(written[name], rows)
    manifest = {
        "world": "shapes",
        "seed": seed,
        "image_size": image_size,
        "image_paths": "relative to this folder",
        "background": list(BACKGROUND),
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "split_triples": {
            split: sum(len(pairs) for pairs in cells.values())
            for split, cells in world.parts.items()
        },
        "images": counts,
        "rows": {name: len(rows) for name, rows in tables.items()},
        "types": {
            name: dict(sorted(Counter(r["type"] for r in rows).items()))
            for name, rows in tables.items()
        },  # fmt: skip
        "type_weights": world.type_weights,
    }
    written["images"] = images
    written["manifest"] = out / "manifest.json"
    atomic_write_text(written["manifest"], json.dumps(manifest, indent=2) + "\n")
    return written


def _extras(prompt: ShapesPrompt) -> dict[str, Any]:
    return {
        "type": prompt.type,
        "answer": prompt.answer,
        "split": prompt.split,
        "scene": prompt.scene.to_record(),
        "gold": dict(prompt.gold),
    }


def _sft_row(prompt: ShapesPrompt, image: str) -> dict[str, Any]:
    messages = [prompt.user_turn(), assistant_turn(prompt.answer)]
    return {"images": [image], "messages": messages, **_extras(prompt)}


def _preference_row(prompt: ShapesPrompt, image: str, rng: random.Random) -> dict[str, Any]:
    rejected, corruption = corrupt(prompt, rng)
    return {
        "images": [image],
        "prompt": [prompt.user_turn()],
        "chosen": [assistant_turn(prompt.answer)],
        "rejected": [assistant_turn(rejected)],
        "corruption": corruption,
        **_extras(prompt),
    }
