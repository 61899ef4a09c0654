"""Checks of what a config names outside itself, run by the CLI before any model loads.

`check_inputs(config)` walks a recipe config and checks every field declared with
`option(..., kind=...)`, naming the field by its full dotted key:

- "model": a model folder or hub id (`alignlab.models.folders.check_model_source`); it must
  also hold a tokenizer when its section's "tokenizer" field is empty;
- "tokenizer": a tokenizer folder or hub id;
- "data": a data file or folder that must exist when it cannot be a hub dataset id;
- "reward": a reward spec (`alignlab.rl.rewards.check_reward_spec`: the function exists and
  takes (prompt, response), the reward-model folders are reward models);
- "output": a folder the run can create or write into.

`load_config` cannot do this: it validates presets whose paths exist only on the machine
that will run them.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError, fields_of
from alignlab.data.sources import looks_local
from alignlab.models.folders import check_model_source
from alignlab.rl.rewards import check_reward_spec


def check_inputs(config: Any, where: str = "") -> None:
    """ConfigError for the first field of `config` whose file, folder or function cannot be
    used (module docstring)."""
    fields = fields_of(type(config))
    kinds = {name: f.metadata.get("kind") for name, f in fields.items()}
    own_tokenizer = any(
        kind == "tokenizer" and getattr(config, name) for name, kind in kinds.items()
    )
    needs_tokenizer = "tokenizer" in kinds.values() and not own_tokenizer
    for name in fields:
        value, key, kind = getattr(config, name), f"{where}{name}", kinds[name]
        if dataclasses.is_dataclass(value):
            check_inputs(value, f"{key}.")
        elif not value or not isinstance(value, str):
            continue
        elif kind == "model":
            revision = getattr(config, "revision", "")
            check_model_source(value, key, tokenizer=needs_tokenizer, revision=revision)
        elif kind == "tokenizer":
            check_model_source(value, key, weights=False, revision=getattr(config, "revision", ""))
        elif kind == "reward":
            check_reward_spec(value, key)
        elif kind == "data" and looks_local(value) and not Path(value).expanduser().exists():
            raise ConfigError(f"{key}={value}: no such file or folder")
        elif kind == "output":
            check_output_folder(value, key)


def check_output_folder(path: str, field: str) -> None:
    """ConfigError when folder `path` cannot be created or written."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{field}={path}: a file is in the way (it must be a folder)")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{field}={path}: {existing} is a file, so the folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}={path}: {existing} is not writable")
    try:  # root passes os.access everywhere, and /proc or a read-only mount still refuse
        os.rmdir(tempfile.mkdtemp(prefix=".alignlab-probe-", dir=existing))
    except OSError as err:
        raise ConfigError(
            f"{field}={path}: a folder cannot be made in {existing} ({err.strerror})"
        ) from None
