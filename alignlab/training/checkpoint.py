"""Checkpoints: plain HF folders plus the training state needed to resume exactly.

Layout of `output_dir/checkpoints/step-00000040/`:
  config.json, model.safetensors, tokenizer files  -> `from_pretrained` loads it directly
  adapter/                                         -> LoRA adapter (LoRA runs only)
  training_state.pt                                -> optimizer, scheduler, scaler, RNG per rank
  trainer_state.json                               -> step, tokens seen, recipe state, the
                                                      run record (recipe + config, run.json)
                                                      and the number of processes
Every folder is written to a hidden temporary sibling and renamed into place, so a kill
mid-save leaves the previous checkpoint intact and the half-written one is never picked up.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from transformers import PreTrainedTokenizerBase

from alignlab.config import ConfigError, LoraConfig
from alignlab.fileio import atomic_folder
from alignlab.models.loading import is_peft, merged_state_dict, unwrap_peft
from alignlab.models.reward import reward_state_dict
from alignlab.training.distributed import Runtime, all_gather_objects, barrier

_STEP_DIR = re.compile(r"^step-(\d+)$")
RUN_FILE = "run.json"  # the run record in output_dir (training/run_folder.py)
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary folders are hidden and skipped)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "trainer_state.json").exists()
    ]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def crash_point(name: str, step: int) -> None:
    """Fault injection for the resume tests: ALIGNLAB_CRASH=<name>:<step> kills the process
    with SIGKILL at that point, as a pre-empted job would die (no cleanup, no flush)."""
    if os.environ.get("ALIGNLAB_CRASH") == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_model_state(module: nn.Module, runtime: Runtime) -> dict[str, torch.Tensor]:
    """The unsharded state dict of `module` on CPU (collective: every rank must call it).

    Tied parameters (e.g. input embeddings and output projection) come back from a sharded
    model as separate copies; they are made one tensor again, so `save_pretrained` stores
    the tie exactly as it does for an unsharded model.
    """
    del runtime  # the same call serves one process and FSDP2
    state = get_model_state_dict(module, options=_FULL)
    first_name: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if name in state:
            state[name] = state[first_name.setdefault(id(param), name)]
    return state


def full_optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The unsharded optimizer state, keyed by `root`'s parameter names (collective)."""
    return get_optimizer_state_dict(root, optimizer, options=_FULL)


def load_full_optimizer_state(
    root: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Restore `full_optimizer_state` output into a (possibly sharded) optimizer."""
    set_optimizer_state_dict(root, optimizer, optim_state_dict=state, options=_FULL)


def save_hf_folder(
    target: str | Path,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    runtime: Runtime,
    lora: LoraConfig | None = None,
    adapter: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save `model` as a plain HF folder (merged weights for LoRA), atomically, from rank 0.

    A LoRA model also gets its adapter alone in `adapter/` when `adapter` is set.
    `extra` maps file names to objects written into the same folder before the rename
    (training state for step checkpoints). Collective: every rank must call it.
    """
    state = full_model_state(model, runtime)
    if runtime.is_main:
        hf_model = unwrap_peft(model)
        with atomic_folder(target) as tmp:
            if is_peft(model):
                if lora is None or lora.save_merged:
                    hf_model.save_pretrained(tmp, state_dict=merged_state_dict(model, state))
                if adapter:
                    model.save_pretrained(tmp / "adapter", state_dict=state)
            else:
                hf_model.save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
            for name, obj in (extra or {}).items():
                if name.endswith(".json"):
                    (tmp / name).write_text(json.dumps(obj, indent=2))
                else:
                    torch.save(obj, tmp / name)
            crash_point("save", int((extra or {}).get("trainer_state.json", {}).get("step", -1)))
    barrier(runtime)
    return Path(target)


def save_reward_folder(
    target: str | Path,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    runtime: Runtime,
    lora: LoraConfig | None = None,
    adapter: bool = True,
) -> Path:
    """Save a reward model as a plain HF sequence-classification folder, atomically. Collective.

    Full models go through `save_hf_folder`; LoRA models get merged weights with the head
    under its plain name (`reward_state_dict`) and, when `adapter`, the adapter (head
    included) in `adapter/`.
    """
    if not is_peft(model):
        return save_hf_folder(target, model, tokenizer, runtime, lora=lora, adapter=adapter)
    state = full_model_state(model, runtime)
    if runtime.is_main:
        with atomic_folder(target) as tmp:
            if lora is None or lora.save_merged:
                unwrap_peft(model).save_pretrained(tmp, state_dict=reward_state_dict(model, state))
            if adapter:
                model.save_pretrained(tmp / "adapter", state_dict=state)
            tokenizer.save_pretrained(tmp)
    barrier(runtime)
    return Path(target)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    runtime: Runtime,
    lora: LoraConfig | None = None,
    scaler: Any = None,
    trainer_state: dict[str, Any] | None = None,
    keep: int = 2,
    root: nn.Module | None = None,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """A resumable step checkpoint; keeps the newest `keep` of them. Collective.

    `root` is the module the optimizer's parameters are named from (the FSDP root);
    it defaults to `model`. `extra_files` (file name -> object, as `save_hf_folder`'s
    `extra`) go into the same atomic folder, e.g. the state of a second model (PPO's critic).
    """
    root = root or model
    training_state = {
        "optimizer": full_optimizer_state(root, optimizer),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": all_gather_objects(_rng_state(), runtime),
    }
    target = checkpoint_dir(output_dir, step)
    run_file = Path(output_dir) / RUN_FILE
    record = json.loads(run_file.read_text()) if run_file.exists() else None
    extra = {
        **(extra_files or {}),
        "training_state.pt": training_state,
        "trainer_state.json": {
            "step": step,
            **(trainer_state or {}),
            "world_size": runtime.world_size,
            "run": record,  # a resume checks it matches (run_folder.open_run_folder)
        },
    }
    save_hf_folder(target, model, tokenizer, runtime, lora=lora, extra=extra)
    if runtime.is_main:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(runtime)
    return target


def load_checkpoint_state(
    checkpoint: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    runtime: Runtime,
    scaler: Any = None,
    root: nn.Module | None = None,
) -> dict[str, Any]:
    """Restore optimizer, scheduler, scaler and this rank's RNG; return trainer_state.json.

    Model weights are not loaded here: the recipe builds the model from the checkpoint
    folder itself (it is a plain HF folder).
    """
    state = torch.load(checkpoint / "training_state.pt", map_location="cpu", weights_only=False)
    load_full_optimizer_state(root, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    if len(rng) != runtime.world_size:  # checkpoints with a run record are checked at start
        raise ConfigError(
            f"{checkpoint} was saved by {len(rng)} process(es); resuming with "
            f"{runtime.world_size} would change the data order and RNG streams"
        )
    _set_rng_state(rng[runtime.rank])
    return json.loads((checkpoint / "trainer_state.json").read_text())
