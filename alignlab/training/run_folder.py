"""A run's folder (`train.output_dir`): whose run it holds, what a new run may do there, and
keeping it whole.

`<output_dir>/run.json` records the recipe and resolved config of the run that writes there, and
every step checkpoint carries the same record (plus the number of processes). Before any work,
with nothing written (`open_run_folder`):
- a fresh run refuses a folder that holds another recipe's or another config's run, a run with
  checkpoints (resume it, or start over), or files that are not a run, unless
  `train.overwrite=true`: then the old run is deleted when the new one first writes (as is,
  without asking, a run that failed before it saved any model: it holds nothing to lose);
- a resumed run refuses a checkpoint of another recipe, another config or another number of
  processes, naming the keys that differ; keys that are safe to change are allowed, and the
  ones that change the schedule are named;
- no run writes over or inside one of its inputs (model, reference, data, reward folders).
The folder is created only at the run's first write (`RunFolder.claim`), so a run that fails
before training leaves it as it found it; the claim also clears what a kill during a save left.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from alignlab.config import ConfigError, to_dict
from alignlab.fileio import atomic_write_text
from alignlab.training.checkpoint import RUN_FILE, list_checkpoints
from alignlab.training.distributed import Runtime

CONFIG_FILE = "config.yaml"

# Keys that do not change what a run computes: a resumed run may differ in them, and a fresh
# run of otherwise the same config counts as the same run.
NEUTRAL_KEYS = frozenset(
    {
        "train.resume", "train.overwrite", "train.output_dir", "final_dir",
        "train.progress", "train.tensorboard", "train.log_every", "train.eval_every",
        "train.save_every", "train.keep_checkpoints", "train.loss_chunk_size",
        "model.gradient_checkpointing", "model.checkpoint_fraction", "train.step_in_backward",
        "reference.batch_size",
        "rl.generation_batch_size", "sampling.batch_size",
    }
)  # fmt: skip
# A resumed run may extend or shorten the schedule (the learning-rate schedule is recomputed for
# the new total: said when it happens) ...
SCHEDULE_KEYS = ("train.max_steps", "train.epochs")
# ... and split the same global batch differently (memory only).
BATCH_KEYS = ("train.micro_batch_size", "train.grad_accum")

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-")


def recipe_name(config: Any) -> str:
    """`alignlab.recipes.dpo.DPOConfig` -> 'dpo'."""
    return type(config).__module__.rsplit(".", 1)[-1]


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every leaf that differs."""
    a, b = flatten(old), flatten(new)
    missing = object()
    return {
        key: (a.get(key, missing), b.get(key, missing))
        for key in sorted(a.keys() | b.keys())
        if a.get(key, missing) != b.get(key, missing)
    }


def describe_changes(changes: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    shown = [f"{key}: {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items()]
    more = f", and {len(shown) - limit} more" if len(shown) > limit else ""
    return "; ".join(shown[:limit]) + more


def _show(value: Any) -> str:
    if value is None:
        return "null"
    return "(absent)" if type(value) is object else repr(value)


@dataclasses.dataclass
class RunFolder:
    """The checked output folder of one run (see the module docstring)."""

    path: Path
    record: dict[str, Any]
    """{"recipe": name, "config": resolved config}: what run.json and checkpoints hold."""
    runtime: Runtime
    final_dir: Path
    resume_from: Path | None = None
    replace: bool = False
    """Delete the folder's old run at the claim (train.overwrite=true on a run folder)."""
    claimed: bool = False

    def claim(self) -> None:
        """The run's first write: (rank 0) delete a replaced run, create the folder, clear
        leftovers of a killed save, write run.json and config.yaml. Idempotent."""
        if self.claimed:
            return
        self.claimed = True
        if not self.runtime.is_main:
            return
        if self.replace and self.path.is_dir():
            for entry in self.path.iterdir():
                shutil.rmtree(
                    entry
                ) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            print(f"removed the earlier run in {self.path}")
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.path, self.path / "checkpoints"):
            clear_leftovers(folder)
        clear_leftovers(self.final_dir.parent, only=self.final_dir.name)
        atomic_write_text(self.path / RUN_FILE, json.dumps(self.record, indent=1) + "\n")
        config_text = yaml.safe_dump(self.record["config"], sort_keys=False)
        atomic_write_text(self.path / CONFIG_FILE, config_text)


def clear_leftovers(folder: Path, only: str | None = None) -> None:
    """Remove the hidden `.name.tmp-*` / `.name.old-*` siblings an interrupted atomic save
    leaves. An `.old` copy whose target is gone (killed between the two renames of a
    replacement) is put back instead: it is the last complete version."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if not match or (only is not None and match["name"] != only):
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and not target.exists():
            entry.rename(target)
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


MODEL_FILES = ("*.safetensors", "pytorch_model*.bin", "adapter_model.*")


def holds_a_model(folder: Path) -> bool:
    """Whether any model weights (a checkpoint, a final model, a stage's model) are under
    `folder`: a run folder without them has nothing a new run could lose."""
    return any(next(folder.rglob(pattern), None) is not None for pattern in MODEL_FILES)


def read_record(folder: Path) -> dict[str, Any] | None:
    """The run record of a run folder: run.json, or the config.yaml of a run made before
    run.json existed (recipe unknown); None for a folder that holds no run."""
    run_file, config_file = folder / RUN_FILE, folder / CONFIG_FILE
    try:
        if run_file.exists():
            return json.loads(run_file.read_text())
        if config_file.exists():
            return {"recipe": None, "config": yaml.safe_load(config_file.read_text())}
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        where = run_file if run_file.exists() else config_file
        raise ConfigError(f"{where}: unreadable ({err})") from err
    return None


def _differs(old: dict[str, Any], new: dict[str, Any], allowed: frozenset[str]) -> dict:
    return {k: v for k, v in config_changes(old, new).items() if k not in allowed}


def open_run_folder(config: Any, runtime: Runtime, parent: RunFolder | None = None) -> RunFolder:
    """Check `config.train.output_dir` for this run and return it, writing nothing.

    `parent` is the run this one is a stage of (the SFT of CoH in the same folder; ReST and
    RAFT stages in sub-folders): the parent checked the folder tree and owns it.
    """
    train = config.train
    path = Path(train.output_dir)
    if parent is not None and parent.path == path:
        return parent
    final_dir = Path(getattr(config, "final_dir", "") or path / "final")
    folder = RunFolder(
        path, {"recipe": recipe_name(config), "config": to_dict(config)}, runtime, final_dir
    )
    if parent is None:
        _check_inputs(folder)
    checkpoint = list_checkpoints(path)[-1] if list_checkpoints(path) else None
    if train.resume and checkpoint is not None:
        _check_resume(folder, checkpoint)
        folder.resume_from = checkpoint
    elif parent is None:
        _check_fresh(folder, checkpoint, train.overwrite)
        _check_final_dir(folder, train.overwrite)
    if runtime.is_main and train.resume:
        print(f"resuming from {checkpoint}" if checkpoint else "resume: no checkpoint yet")
    return folder


def _where(path: Path) -> str:
    return f"train.output_dir={path}"


def _check_fresh(folder: RunFolder, checkpoint: Path | None, overwrite: bool) -> None:
    path = folder.path
    entries = [e for e in path.iterdir() if not _LEFTOVER.match(e.name)] if path.is_dir() else []
    if not entries:
        return
    record = read_record(path)
    if record is None:
        if overwrite:
            return  # not ours: written into, never deleted
        names = ", ".join(sorted(e.name for e in entries)[:5])
        raise ConfigError(
            f"{_where(path)} is not empty and holds no alignlab run ({names}); pick a new or "
            "empty folder, or set train.overwrite=true to write into it anyway"
        )
    folder.replace = overwrite or not holds_a_model(path)
    if folder.replace:  # told to, or an earlier run that failed before it saved any model
        return
    recipe = record.get("recipe")
    if recipe and recipe != folder.record["recipe"]:
        raise ConfigError(
            f"{_where(path)} holds a {recipe} run; this {folder.record['recipe']} run would "
            "replace it. Pick another train.output_dir (the default is "
            f"runs/{folder.record['recipe']}), or set train.overwrite=true to replace it"
        )
    changes = _differs(record.get("config") or {}, folder.record["config"], NEUTRAL_KEYS)
    if changes:
        raise ConfigError(
            f"{_where(path)} holds another {recipe or 'alignlab'} run ({describe_changes(changes)});"
            " pick another train.output_dir, or set train.overwrite=true to replace it"
        )
    if checkpoint is not None and folder.final_dir.exists():
        raise ConfigError(
            f"{_where(path)} holds this run, finished ({folder.final_dir.name}/ and checkpoints "
            f"up to {checkpoint.name}); run it again with train.overwrite=true, or pick another "
            "train.output_dir"
        )
    if checkpoint is not None:
        raise ConfigError(
            f"{_where(path)} holds this run's checkpoints (up to {checkpoint.name}); continue "
            "it with train.resume=true, or start over with train.overwrite=true"
        )


def _check_final_dir(folder: RunFolder, overwrite: bool) -> None:
    """A final_dir outside the run folder is nobody's cache: a model already there (say, the
    final_dir of the config.yaml this run was copied from) is replaced only when told to."""
    final = folder.final_dir
    if final.resolve().is_relative_to(folder.path.resolve()) or overwrite:
        return
    if final.is_dir() and any(final.iterdir()):
        names = ", ".join(sorted(e.name for e in final.iterdir())[:3])
        raise ConfigError(
            f"final_dir={final} already holds files ({names}, ...); this run would replace them. Pick another final_dir (left empty, the model "
            f"goes to {folder.path / 'final'}), or set train.overwrite=true to replace them"
        )


def _check_resume(folder: RunFolder, checkpoint: Path) -> None:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    where = f"train.resume: {checkpoint}"
    saved = state.get("run")
    if saved is None:
        print(f"{where} was saved by an older alignlab without a config record; not checked")
        return
    recipe = folder.record["recipe"]
    if saved.get("recipe") != recipe:
        raise ConfigError(
            f"{where} is a checkpoint of a {saved.get('recipe')} run, not of this {recipe} run; "
            "pick another train.output_dir, or drop train.resume to start a new run"
        )
    old, new = saved["config"], folder.record["config"]
    allowed = NEUTRAL_KEYS | set(SCHEDULE_KEYS) | set(BATCH_KEYS)
    changes = _differs(old, new, allowed)
    if changes:
        raise ConfigError(
            f"{where} belongs to another config ({describe_changes(changes)}); resuming would "
            "splice two runs. Pick another train.output_dir, or drop train.resume to start "
            "over (with train.overwrite=true)"
        )
    world_size = state.get("world_size", folder.runtime.world_size)
    if world_size != folder.runtime.world_size:
        raise ConfigError(
            f"{where} was saved by {world_size} process(es); resume it with {world_size} "
            f"(torchrun --nproc_per_node {world_size}), not {folder.runtime.world_size}: the "
            "data order and random streams are per process"
        )
    (old_micro, old_accum), (micro, accum) = (
        [flatten(c).get(k, 1) for k in BATCH_KEYS] for c in (old, new)
    )
    if old_micro * old_accum != micro * accum:
        raise ConfigError(
            f"{where}: train.micro_batch_size x train.grad_accum was {old_micro} x {old_accum}, "
            f"now {micro} x {accum}; a resumed run must keep the batch of an optimizer step "
            "(it may split it differently)"
        )
    schedule = {k: v for k, v in config_changes(old, new).items() if k in SCHEDULE_KEYS}
    if schedule and folder.runtime.is_main:
        print(
            f"resume: {describe_changes(schedule)}; the learning-rate schedule is recomputed for "
            "the new total number of steps"
        )


INPUT_KEYS = ("path", "eval_path", "tokenizer", "reward", "gold")


def _input_paths(config: dict[str, Any]) -> dict[str, Path]:
    """Existing local files and folders the config reads: the values of path-like keys
    (`model.path`, `data.eval_path`, `rl.reward`, ...); a reward `file.py:function` counts as
    its file, a comma-separated ensemble as each member."""
    found = {}
    for key, value in flatten(config).items():
        if key.rsplit(".", 1)[-1] not in INPUT_KEYS or not isinstance(value, str):
            continue
        for member in filter(None, value.split(",")):
            for candidate in (member, member.rsplit(":", 1)[0]):
                if "://" not in candidate and Path(candidate).exists():
                    found[f"{key}"] = Path(candidate).resolve()
                    break
    return found


def _check_inputs(folder: RunFolder) -> None:
    out, final = folder.path.resolve(), folder.final_dir.resolve()
    for key, source in _input_paths(folder.record["config"]).items():
        for written, name in ((out, "train.output_dir"), (final, "final_dir")):
            inside = source.is_relative_to(written)  # includes source == written
            if inside or (source.is_dir() and written.is_relative_to(source)):
                raise ConfigError(
                    f"{key}={source} is an input of this run and {name}={written} would write "
                    f"{'over' if inside else 'inside'} it; write the run to another folder "
                    f"(e.g. train.output_dir=runs/{folder.record['recipe']})"
                )
