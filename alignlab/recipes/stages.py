"""Pipeline stages, each cached in its own folder: a rerun skips every stage already done.

    key = stage_key("sft", preset_text, *overrides)         # what a stage is made from
    out = cached(folder, key, folder / "final", make)        # make() only when stale or absent
    final = recipe_stage("dpo", "dpo_lab", ["model.path=..."], Path("runs/x/dpo"))

A stage is done when its output exists and `source.txt` beside it holds the key it was made
from; the key is written after the output, and every output appears only when complete (an
atomic write or a rename), so a run killed mid-stage redoes that stage and no other. The lab's
pipeline (`alignlab.lab.pipeline`) and the AI-feedback pipelines (`alignlab.recipes.cai`,
`online_dpo`, ...) chain their stages this way.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignlab.config import load_config
from alignlab.fileio import atomic_folder, atomic_write_text
from alignlab.recipes import RECIPES, resolve_preset

MARKER = "source.txt"


def stage_key(*parts: object) -> str:
    """A short hash of `parts` (their str()s): what a stage was made from."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def is_done(folder: Path, key: str, output: Path) -> bool:
    """Whether `output` exists and was made from `key`."""
    marker = folder / MARKER
    return output.exists() and marker.exists() and marker.read_text() == key


def cached(
    folder: Path, key: str, output: Path, make: Callable[[], Path], quiet: bool = False
) -> Path:
    """`output` if it exists and was made from `key`, else `make()` (then `key` is recorded
    in `folder`/source.txt). `output` must appear only when complete (an atomic write)."""
    if is_done(folder, key, output):
        if not quiet:
            print(f"cached in {output}")
        return output
    result = make()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MARKER, key)
    return result


def recipe_stage(
    recipe: str, preset: str | None, overrides: Sequence[str], out: Path, key: str = ""
) -> Path:
    """Run `recipe` with a preset (a shipped name or a file, or None) and overrides into
    `out`; its final model folder. A stale stage's folder is replaced, not refused."""
    module_name, config_name = RECIPES[recipe]
    module = importlib.import_module(module_name)
    args = [*overrides, f"train.output_dir={out}"]
    preset_path = resolve_preset(preset) if preset else None
    config = load_config(getattr(module, config_name), preset_path, [*args, "train.overwrite=true"])
    # the preset's text, not its name: an edited preset retrains
    made_from = stage_key(recipe, preset_path.read_text() if preset_path else "", *args, key)
    return cached(out, made_from, out / "final", lambda: module.run(config))


def input_stamp(path: str | Path) -> str:
    """What identifies an input of a stage for its key: a file's size and mtime, a model
    folder's weight files' names and mtimes, else the string itself (a hub id)."""
    source = Path(path).expanduser()
    if source.is_file():
        info = source.stat()
        return f"{path}:{info.st_size}:{info.st_mtime_ns}"
    if not source.is_dir():
        return str(path)
    files = sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin"))
    return ",".join(f"{f.name}:{f.stat().st_mtime_ns}" for f in files)


def publish_final(
    source: Path, out: Path, stages: dict[str, Path] | None = None, record: Any = None
) -> Path:
    """output_dir/final: the pipeline's last model, hard-linked file by file (a copy where
    links cannot be made), so it is a plain folder that stays valid whichever stage folder is
    later redone; beside it output_dir/pipeline.json names every stage's output and holds
    `record` (e.g. the labels' statistics)."""
    final = out / "final"

    def make() -> Path:
        with atomic_folder(final) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
        return final

    cached(out, stage_key(source, input_stamp(str(source))), final, make, quiet=True)
    summary = {name: str(path) for name, path in (stages or {}).items()}
    summary |= {"final": str(final), "made_from": str(source)}
    if record is not None:
        summary["record"] = record
    text, pipeline = json.dumps(summary, indent=2), out / "pipeline.json"
    if not pipeline.exists() or pipeline.read_text() != text:  # a rerun with nothing to do
        atomic_write_text(pipeline, text)  # writes nothing
    print(f"final model: {final} (from {source})")
    return final


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
