"""Model folders and hub ids, checked before anything loads, in one line per problem.

`check_model_source(source, field)` looks at what `from_pretrained` will read without reading
the weights: the folder exists (or the hub id is cached, or, online, on the hub), config.json
is a JSON object with a `model_type`, each safetensors file is as long as its header says.
A problem is a `ConfigError` naming the field and the file ("model.path=/x: config.json is not
valid JSON (line 3: ...)"). `load_error` turns what slips through to loading into the same
kind of line.

A hub id that is not cached costs one request with no retries, so a machine without network
fails in a second instead of after huggingface_hub's minute of retries; with HF_HUB_OFFLINE=1
only the cache is looked at.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import constants, file_exists, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from alignlab.config import ConfigError, UserInputError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
)


def check_model_source(
    source: str,
    field: str,
    *,
    weights: bool = True,
    tokenizer: bool = False,
    reward_model: bool = False,
    revision: str = "",
) -> None:
    """ConfigError when `source` (the value of config field `field`) cannot be loaded.

    `weights`: it must hold a model (config.json and weights); False for a tokenizer alone.
    `tokenizer`: it must also hold a tokenizer. `reward_model`: it must be a
    sequence-classification model with one label (a folder `alignlab rm` saved).
    """
    path = Path(source).expanduser()
    if not path.exists():
        _check_hub_id(
            source, field, "config.json" if weights else "tokenizer_config.json", revision
        )
        return
    where = f"{field}={source}"
    if not path.is_dir():
        raise ConfigError(f"{where}: a file, not a model folder (give the folder that holds it)")
    if tokenizer or not weights:
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(f"{where}: no tokenizer in it (no {' / '.join(TOKENIZER_FILES)})")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (path / name).is_file():
                _read_json(path / name, where)
    if not weights or (path / "adapter_config.json").is_file():
        return  # a peft adapter folder: transformers loads its base model first
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{where}: no config.json in it (not a Hugging Face model folder)")
    config = _read_json(config_file, where)
    if "model_type" not in config:
        raise ConfigError(f"{where}: config.json has no model_type (not a transformers config)")
    _check_weights(path, where)
    if reward_model:
        _check_reward_config(config, where)


def _read_json(path: Path, where: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{where}: {path.name} is not valid JSON (line {err.lineno}: {err.msg})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path.name} is not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot read {path.name}: {err.strerror}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {path.name} is not a JSON object")
    return value


def _check_weights(folder: Path, where: str) -> None:
    for index_name in SHARD_INDEXES:
        if (folder / index_name).is_file():
            index = _read_json(folder / index_name, where)
            shards = sorted(set((index.get("weight_map") or {}).values()))
            for shard in shards:
                if not (folder / shard).is_file():
                    raise ConfigError(f"{where}: {shard} (listed in {index_name}) is missing")
                if shard.endswith(".safetensors"):
                    _check_safetensors(folder / shard, where)
            return
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            if name.endswith(".safetensors"):
                _check_safetensors(folder / name, where)
            return
    raise ConfigError(f"{where}: no weights in it (no {' / '.join(WEIGHT_FILES)})")


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file, or None. Reads only the header: 8 bytes
    of little-endian header length, a JSON header, then exactly the tensor bytes it lists."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        header_length = int.from_bytes(head, "little")
        if header_length > size - 8:
            return f"{size} bytes, but its header alone claims {header_length}"
        try:
            header = json.loads(f.read(header_length))
            ends = [
                int(entry["data_offsets"][1])
                for key, entry in header.items()
                if key != "__metadata__"
            ]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not the JSON table of tensors safetensors writes"
    expected = 8 + header_length + max(ends, default=0)
    if expected != size:
        return f"{size} bytes, but its header describes {expected}"
    return None


def _check_safetensors(path: Path, where: str) -> None:
    problem = safetensors_problem(path)
    if problem:
        raise ConfigError(f"{where}: {path.name} is truncated or corrupt: {problem}")


def _check_reward_config(config: dict, where: str) -> None:
    architectures = config.get("architectures") or []
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        kind = ", ".join(map(str, architectures)) or "no architectures listed"
        raise ConfigError(
            f"{where}: not a reward model ({kind}); a reward model is a sequence-classification "
            "folder with one label, as `alignlab rm` saves"
        )
    labels = len(config.get("id2label") or {}) or 2  # transformers' default is 2 labels
    if labels != 1:
        raise ConfigError(f"{where}: a classifier with {labels} labels; a reward model has 1")


def _check_hub_id(source: str, field: str, filename: str, revision: str) -> None:
    where = f"{field}={source}"
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ConfigError(f"{where}: no such folder (and not a hub id)") from None
    if source.startswith((".", "~")):
        raise ConfigError(f"{where}: no such folder")
    cached = try_to_load_from_cache(source, filename, revision=revision or None)
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            f"{where}: not a local folder, and not in the hub cache (offline: HF_HUB_OFFLINE=1)"
        )
    try:
        found = file_exists(source, filename, revision=revision or None)
    except GatedRepoError:
        raise ConfigError(
            f"{where}: a gated hub repo; accept its terms on the hub and log in (hf auth login)"
        ) from None
    except Exception as err:  # no network, DNS, proxy, TLS: all mean the hub cannot answer
        raise ConfigError(
            f"{where}: not a local folder, and the hub is unreachable ({_first_line(err)}); "
            "with HF_HUB_OFFLINE=1 only cached models are used"
        ) from None
    if not found:
        raise ConfigError(
            f"{where}: not a local folder, and no model repo of that id on the hub "
            "(or a private one: log in with `hf auth login`)"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_error(source: str, what: str, err: BaseException) -> UserInputError:
    """One line for `from_pretrained(source)` failing on what it was given: a hub id it cannot
    fetch, a file it cannot read, a truncated or corrupt weights file."""
    reason = _first_line(err)
    if type(err).__name__ == "SafetensorError":
        reason = f"a safetensors file is truncated or corrupt ({err})"
    return UserInputError(f"cannot load the {what} from {source}: {reason}")
