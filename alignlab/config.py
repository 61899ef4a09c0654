"""Recipe configs: nested dataclasses, YAML presets, dotted `key.sub=value` overrides.

Every field is declared with `option(default, "one-line doc", ...)`; the doc is what
`alignlab <recipe> --help` prints. Validation happens before any work starts:
unknown keys name the closest valid key, bad values name the field, the value and what is
allowed, and each section's `check()` refuses conflicting settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so `no`, `on`, `off` stay strings
    (`train.mixed_precision=no` must not become False)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own message spans several lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


class UserInputError(Exception):
    """Something a user gave, or the machine they run on, cannot be used: a model folder, a
    reward function, a missing CUDA device. The message is one line naming the field or file
    and what is wrong; the CLI prints it and exits with code 2, never a traceback."""


class ConfigError(UserInputError, ValueError):
    """A config value, key or combination that is not allowed; the message says which."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are a ConfigError (one line, exit code 2 through the CLI)
    instead of the usage text and SystemExit."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def option(
    default: Any,
    doc: str,
    *,
    choices: tuple[Any, ...] | None = None,
    min: float | None = None,  # noqa: A002 - reads naturally at the call site
    max: float | None = None,  # noqa: A002
    min_exclusive: bool = False,
    kind: str | None = None,
) -> Any:
    """A dataclass field with a one-line doc and an allowed range or set of values.

    `kind` marks a field that names something outside the config ("model", "tokenizer",
    "reward", "data", "output"): `alignlab.preflight.check_inputs` checks it exists and is usable
    before any model loads.
    """
    metadata = {
        "doc": doc,
        "choices": choices,
        "min": min,
        "max": max,
        "gt": min_exclusive,
        "kind": kind,
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, doc: str, **defaults: Any) -> Any:
    """A nested config section (a dataclass instance built with defaults); `defaults` are this
    recipe's own defaults for some of its fields (e.g. `output_dir="runs/dpo"`)."""
    return dataclasses.field(
        default_factory=lambda: cls(**defaults), metadata={"doc": doc, "defaults": defaults}
    )


# --- shared sections ---


@dataclasses.dataclass
class LoraConfig:
    """Low-rank adapters through peft. Off unless `enabled`."""

    enabled: bool = option(False, "train LoRA adapters instead of all weights")
    r: int = option(16, "adapter rank", min=1)
    alpha: float = option(32.0, "scaling numerator: the update is scaled by alpha / r", min=0)
    dropout: float = option(0.0, "dropout on the adapter input", min=0, max=1)
    target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "module names (or suffixes) that get adapters; 'all-linear' for every linear layer",
    )
    load_in_4bit: bool = option(False, "QLoRA: load the frozen base in 4-bit NF4 (CUDA only)")
    save_merged: bool = option(True, "save checkpoints as merged plain HF weights")
    save_adapter: bool = option(False, "also save the adapter alone in final/adapter")

    def check(self) -> None:
        if self.enabled and any(m == "lm_head" for m in self.target_modules):
            raise ConfigError(
                "model.lora.target_modules: 'lm_head' is not supported (the loss reads the "
                "output projection directly); train it fully or leave it frozen"
            )
        if self.load_in_4bit and not self.enabled:
            raise ConfigError("model.lora.load_in_4bit=true needs model.lora.enabled=true (QLoRA)")
        if self.load_in_4bit:
            _check_qlora_machine()
        if self.enabled and not (self.save_merged or self.save_adapter):
            raise ConfigError(
                "model.lora: save_merged and save_adapter are both false; nothing to save"
            )


def _check_qlora_machine() -> None:
    """4-bit loading needs a CUDA device and bitsandbytes: refuse here, not at load time."""
    import torch  # here, so that reading a config does not import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "model.lora.load_in_4bit=true (QLoRA) needs a CUDA device and this machine has "
            "none; set model.lora.load_in_4bit=false to train LoRA on full-precision weights"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "model.lora.load_in_4bit=true (QLoRA) needs bitsandbytes, which is not installed: "
            "pip install 'alignlab[qlora]'"
        )


@dataclasses.dataclass
class ModelConfig:
    """Which causal LM to load and how."""

    path: str = option("", "hub id or local folder of an HF causal LM", kind="model")
    tokenizer: str = option(
        "", "tokenizer hub id or folder; empty means the model's", kind="tokenizer"
    )
    dtype: str = option("fp32", "weight dtype", choices=("fp32", "bf16", "fp16"))
    gradient_checkpointing: bool = option(False, "recompute activations in backward")
    checkpoint_fraction: float = option(
        1.0,
        "with gradient_checkpointing, the fraction of decoder layers (the first ones) that "
        "recompute; the rest keep their activations: less recompute for more memory",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    attn_implementation: str = option(
        "auto",
        "attention kernel; auto = what from_pretrained picks for the architecture",
        choices=("auto", "sdpa", "eager", "flash_attention_2", "flex_attention"),
    )
    disable_dropout: bool = option(
        False,
        "set every dropout of the model to 0, so the trained model computes what its frozen "
        "reference computes; preference and RL recipes default to true (as their papers' code)",
    )
    trust_remote_code: bool = option(False, "allow model code from the hub")
    revision: str = option("", "hub revision (branch, tag or commit); empty is the default")
    lora: LoraConfig = section(LoraConfig, "LoRA / QLoRA adapters")

    def check(self) -> None:
        if not self.path:
            raise ConfigError("model.path is required: a hub id or a local model folder")
        if self.checkpoint_fraction != 1 and not self.gradient_checkpointing:
            raise ConfigError(
                f"model.checkpoint_fraction={self.checkpoint_fraction} needs "
                "model.gradient_checkpointing=true"
            )
        flash = self.attn_implementation == "flash_attention_2"
        if flash and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                "model.attn_implementation=flash_attention_2 needs the flash-attn package, "
                "which is not installed; use sdpa (the default)"
            )


@dataclasses.dataclass
class DataConfig:
    """Where the examples come from and how they become token sequences."""

    path: str = option(
        "", "JSONL/JSON/Parquet file, a `datasets` folder, or a hub dataset id", kind="data"
    )
    split: str = option("train", "split to read from a hub dataset or a saved DatasetDict")
    eval_path: str = option(
        "", "held-out file/dataset for eval loss; empty uses eval_fraction", kind="data"
    )
    eval_fraction: float = option(0.0, "fraction of `path` held out for eval loss", min=0, max=0.5)
    format: str = option(
        "auto",
        "dataset format; auto detects it from the keys",
        choices=(
            "auto",
            "language_modeling",
            "prompt_completion",
            "conversational",
            "preference",
            "unpaired_preference",
            "ranked",
        ),
    )
    max_length: int = option(
        1024, "max tokens per sequence (prompt + completion); 0 = no limit", min=0
    )
    truncation: str = option(
        "keep_start",
        "how over-long examples are cut: keep the start, keep the end, or skip them",
        choices=("keep_start", "keep_end", "skip"),
    )
    on_bad_example: str = option(
        "error",
        "bad record (missing/empty field, malformed line): stop with an error or skip and count",
        choices=("error", "skip"),
    )
    completion_only_loss: bool = option(True, "loss only on completion / assistant tokens")
    packing: bool = option(False, "pack short examples into max_length sequences")
    max_examples: int = option(0, "use at most this many records; 0 = all", min=0)

    def check(self) -> None:
        if not self.path:
            raise ConfigError("data.path is required: a data file, folder or hub dataset id")
        if self.packing and self.max_length == 0:
            raise ConfigError("data.packing=true needs data.max_length > 0 (the packed length)")
        if self.eval_path and self.eval_fraction > 0:
            raise ConfigError("set data.eval_path or data.eval_fraction, not both")


@dataclasses.dataclass
class TrainConfig:
    """The optimisation loop shared by the recipes."""

    output_dir: str = option(
        "runs/train",
        "folder for checkpoints, metrics.jsonl and tensorboard/ (runs/<recipe>)",
        kind="output",
    )
    seed: int = option(0, "seed for init, shuffling and sampling")
    epochs: float = option(
        1.0, "passes over the data (fractions allowed)", min=0, min_exclusive=True
    )
    max_steps: int = option(0, "stop after this many optimizer steps; 0 = from epochs", min=0)
    micro_batch_size: int = option(8, "sequences per forward pass per process", min=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1)
    group_by_length: bool = option(
        False,
        "batch examples of similar length together, batches in random order (less padding, "
        "as HF's LengthGroupedSampler; its cost on the lab's data: docs/methods/sft.md)",
    )
    lr: float = option(2e-5, "peak learning rate", min=0, min_exclusive=True)
    optimizer: str = option(
        "adamw",
        "adamw; or sgd: plain SGD, no optimizer state (its updates are linear in the gradient, "
        "so runs that differ only in float summation order stay close)",
        choices=("adamw", "sgd"),
    )
    weight_decay: float = option(0.0, "decoupled weight decay (not on norms/biases)", min=0)
    adam_beta1: float = option(0.9, "AdamW beta1", min=0, max=1)
    adam_beta2: float = option(0.999, "AdamW beta2", min=0, max=1)
    adam_eps: float = option(1e-8, "AdamW epsilon", min=0, min_exclusive=True)
    warmup_steps: int = option(0, "linear warm-up steps (overrides warmup_ratio when > 0)", min=0)
    warmup_ratio: float = option(0.0, "warm-up as a fraction of total steps", min=0, max=1)
    schedule: str = option(
        "cosine", "decay after warm-up", choices=("cosine", "linear", "constant")
    )
    min_lr_ratio: float = option(0.0, "final lr as a fraction of the peak", min=0, max=1)
    max_grad_norm: float = option(1.0, "clip the global gradient norm; 0 = no clipping", min=0)
    step_in_backward: bool = option(
        False,
        "AdamW updates each parameter in backward as soon as its gradient is complete, then "
        "frees that gradient: no step holds all gradients (4 bytes x parameters less at the "
        "peak); needs grad_accum=1, max_grad_norm=0, one process",
    )
    mixed_precision: str = option(
        "no", "autocast dtype for forward passes", choices=("no", "bf16", "fp16")
    )
    log_every: int = option(1, "optimizer steps between metric records", min=1)
    eval_every: int = option(
        0, "optimizer steps between eval-loss passes; 0 = only at the end", min=0
    )
    save_every: int = option(
        0, "optimizer steps between checkpoints; 0 = only the final one", min=0
    )
    keep_checkpoints: int = option(2, "how many step checkpoints to keep (oldest removed)", min=1)
    resume: bool = option(False, "continue from the last checkpoint in output_dir")
    overwrite: bool = option(
        False,
        "replace the run already in output_dir (another recipe's or config's, or one with "
        "checkpoints): its folder is emptied when this run first writes",
    )
    loss_chunk_size: int = option(
        1024, "tokens per chunk of the output-projection log-softmax", min=1
    )
    progress: bool = option(True, "show a tqdm progress bar (rank 0)")
    tensorboard: bool = option(True, "also write metrics to output_dir/tensorboard")

    def check(self) -> None:
        if not self.output_dir:
            raise ConfigError("train.output_dir is required: the folder this run writes")
        if self.resume and self.overwrite:
            raise ConfigError(
                "train.resume=true continues the run in output_dir, train.overwrite=true "
                "replaces it: set one of them"
            )
        if self.step_in_backward:
            # each gradient is spent the moment it is complete: nothing to accumulate or clip
            needs = {
                "train.grad_accum=1": self.grad_accum == 1,
                "train.max_grad_norm=0 (the global norm is known only after every update)": (
                    self.max_grad_norm == 0
                ),
                "train.optimizer=adamw": self.optimizer == "adamw",
                "train.mixed_precision other than fp16 (its loss scaler unscales every "
                "gradient first)": self.mixed_precision != "fp16",
            }
            missing = [need for need, met in needs.items() if not met]
            if missing:
                raise ConfigError("train.step_in_backward=true needs " + "; ".join(missing))


# --- machinery ---

C = TypeVar("C")


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    """The dataclass fields of `cls` by name, with string annotations resolved."""
    hints = typing.get_type_hints(cls)
    result = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        result[f.name] = f
    return result


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _shown(value: Any) -> str:
    """A value as the user wrote it: YAML's `null`, not Python's None."""
    return "null" if value is None else repr(value)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option_type in typing.get_args(annotation):
            if option_type is type(None) and value is None:
                return None
            try:
                return _coerce(value, option_type, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {_shown(value)} is not {_describe(annotation)}")
    if origin is Literal:
        if value not in typing.get_args(annotation):
            allowed = ", ".join(_shown(a) for a in typing.get_args(annotation))
            raise ConfigError(f"{where}: {_shown(value)} is not one of {allowed}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):  # `key=a,b` on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(
                f"{where}: expected a list of {_describe(item_type)}, got {_shown(value)}"
            )
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_shown(value)}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads `3e-4` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation is Any or isinstance(value, annotation):
        if annotation is int and isinstance(value, bool):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if value is None:
        raise ConfigError(f"{where}: expected {_describe(annotation)}, got null")
    raise ConfigError(
        f"{where}: expected {_describe(annotation)}, got {value!r} ({type(value).__name__})"
    )


def _check_range(value: Any, f: dataclasses.Field, where: str) -> None:
    meta = f.metadata
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = ", ".join(_shown(c) for c in meta["choices"])
        raise ConfigError(f"{where}: {_shown(value)} is not allowed; choose one of {allowed}")
    low, high = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if low is not None and (value < low or (meta.get("gt") and value == low)):
            relation = ">" if meta.get("gt") else ">="
            raise ConfigError(f"{where}: {value!r} is out of range; it must be {relation} {low}")
        if high is not None and value > high:
            raise ConfigError(f"{where}: {value!r} is out of range; it must be <= {high}")


def _unknown_key(
    key: Any, valid: list[str], where: str, renamed: dict[str, str] | None = None
) -> ConfigError:
    """The unknown key and the closest valid one, both as full dotted keys (`train.lr`).
    `renamed` maps a section's old key names to their new ones (a class's `RENAMED`)."""
    if renamed and key in renamed:
        return ConfigError(
            f"unknown key '{where}{key}'; did you mean {where}{renamed[key]}? "
            f"({where}{key} was renamed {where}{renamed[key]})"
        )
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if close:
        hint = f"; did you mean {where}{close[0]}?"
    else:
        section_name = f" of {where.rstrip('.')}" if where else ""
        hint = f"; valid keys{section_name}: {', '.join(valid)}"
    return ConfigError(f"unknown key '{where}{key}'{hint}")


def build(cls: type[C], values: dict[str, Any], where: str = "") -> C:
    """Instantiate dataclass `cls` from nested `values`, checking keys, types and ranges."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    fields = fields_of(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(key, list(fields), where, getattr(cls, "RENAMED", None))
        f = fields[key]
        name = f"{where}{key}"
        if dataclasses.is_dataclass(f.type):
            values_here = {**f.metadata.get("defaults", {}), **(value or {})}
            kwargs[key] = build(f.type, values_here, f"{name}.")
        else:
            kwargs[key] = _coerce(value, f.type, name)
            _check_range(kwargs[key], f, name)
    config = cls(**kwargs)
    for key, f in fields.items():  # defaults are checked too: a required field may be empty
        if not dataclasses.is_dataclass(f.type) and key not in kwargs:
            _check_range(getattr(config, key), f, f"{where}{key}")
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value) with the value read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML: {yaml_problem(err)}"
        ) from err
    if value is None and raw not in ("null", "~"):
        value = raw
    return key.strip().split("."), value


def merge_override(values: dict[str, Any], path: list[str], value: Any) -> None:
    node = values
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def load_config(cls: type[C], preset: str | Path | None = None, overrides: list[str] = ()) -> C:
    """Config from an optional YAML preset plus `key.sub=value` overrides, validated."""
    values: dict[str, Any] = {}
    if preset:
        try:
            values = read_yaml(Path(preset).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{preset}: not valid YAML: {yaml_problem(err)}") from err
        except OSError as err:
            raise ConfigError(f"cannot read config {preset}: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"{preset}: not a YAML text file ({err.reason})") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{preset}: the top level must be a mapping of sections")
    for text in overrides:
        path, value = parse_override(text)
        merge_override(values, path, value)
    config = build(cls, values)
    check_all(config)
    return config


def check_all(config: Any) -> None:
    """Run every section's `check()`, outermost last (it may compare sections)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_all(value)
    if hasattr(config, "check"):
        config.check()


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per field: `key = default  doc`, for --help (`defaults`: an instance of `cls`
    holding this recipe's defaults)."""
    defaults = cls() if defaults is None else defaults
    lines = []
    for name, f in fields_of(cls).items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(f.type):
            lines.append(f"{prefix}{name}: {f.metadata.get('doc', '')}")
            lines.extend(describe(f.type, f"{prefix}{name}.", default))
            continue
        extra = (
            f"; one of {', '.join(map(str, f.metadata['choices']))}"
            if f.metadata.get("choices")
            else ""
        )
        lines.append(f"  {prefix}{name} = {default!r}  {f.metadata.get('doc', '')}{extra}")
    return lines
