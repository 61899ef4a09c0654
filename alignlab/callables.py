"""`module:function` and `path/to/file.py:function` specs (rewards, scorers) resolved to
callables, with ConfigErrors that name the field and the spec."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError


def resolve_callable(spec: str, field: str = "--reward") -> Callable[..., Any]:
    """`module:function` (dotted attribute allowed) or `path/to/file.py:function`.

    A file is imported once per process (under a module name derived from its path), however
    often it is resolved. Problems are ConfigErrors naming `field` and the spec.
    """
    where = f"{field}={spec}"
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where}: expected module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
            module = _import_file(Path(module_name), where)
        else:
            module = importlib.import_module(module_name)
    except SyntaxError as err:
        raise ConfigError(
            f"{where}: {err.filename or module_name} line {err.lineno}: SyntaxError: {err.msg}"
        ) from None
    except ImportError as err:
        raise ConfigError(f"{where}: cannot import {module_name}: {err}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            defined = sorted(
                name
                for name, value in vars(module).items()
                if callable(value)
                and not name.startswith("_")
                and getattr(value, "__module__", None) == module.__name__
            )
            hint = f" (it defines: {', '.join(defined[:10])})" if defined else ""
            raise ConfigError(f"{where}: {module_name} has no attribute {attr!r}{hint}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{where}: {attr} is a {type(target).__name__}, not a function")
    return target


def _import_file(path: Path, where: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{where}: no such file {path}")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    name = f"_alignlab_reward_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{where}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it, as `import` does (dataclasses need it)
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
