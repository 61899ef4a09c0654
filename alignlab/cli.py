"""Command line: `alignlab <recipe> --config PRESET key.sub=value ...` and a few tools.

Thin on purpose: parse, build the recipe's config, check what it names
(`alignlab.preflight`), call its `run`.

A user's mistake, or what their machine lacks, is one line on stderr and exit code 2:
`ConfigError`, `DataError`, any other `UserInputError` (a model that cannot load, a reward
function answering the wrong thing), a full disk, a folder without permission, out of memory.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import shutil
import sys
from pathlib import Path

from alignlab.config import ArgumentParser, ConfigError, UserInputError, describe, load_config
from alignlab.recipes import RECIPES, presets, resolve_preset


def run_recipe(name: str, argv: list[str]) -> None:
    module_name, config_name = RECIPES[name]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    parser = ArgumentParser(
        prog=f"alignlab {name}",
        description=(config_cls.__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="options (key.sub=value):\n" + "\n".join(describe(config_cls)),
    )
    parser.add_argument("--config", help="YAML preset: a file or a shipped preset name")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    preset = resolve_preset(args.config) if args.config else None
    config = load_config(config_cls, preset, args.overrides)
    from alignlab.preflight import check_inputs

    check_inputs(config)
    module.run(config)


def list_recipes() -> None:
    for name, (module_name, _) in RECIPES.items():
        doc = (importlib.import_module(module_name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:8s} {doc}")
        for preset in presets(name):
            print(f"         preset: {preset.stem}")


def copy_preset(name: str, dest: str) -> None:
    source = resolve_preset(name)
    target = Path(dest)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise ConfigError(f"{target} exists; not overwriting it")
    try:
        shutil.copyfile(source, target)
    except OSError as err:
        raise ConfigError(f"cp {name} {dest}: cannot write {target}: {err.strerror}") from err
    print(f"copied {source.name} -> {target}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tools = ("recipes", "cp", "eval", "rm-eval", "lab", "serve")
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: alignlab {" + ",".join([*RECIPES, *tools]) + "} ...")
        print("  <recipe> --config PRESET key.sub=value ...   train (see alignlab <recipe> --help)")
        print("  recipes                                      list recipes and shipped presets")
        print("  cp PRESET DEST                               copy a preset to edit")
        print("  eval --model DIR [--ref DIR] [--prompts FILE] evaluate; without --prompts on the")
        print("                                               lab's heldout prompts with gold")
        print("  rm-eval --rm DIR [--rm DIR ...] --pairs FILE  reward-model accuracy, calibration")
        print("  lab build|export|demo|vlm                    the simulated world (docs/lab.md)")
        print("  serve DIR [--model NAME=DIR ...]             OpenAI-compatible server")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in RECIPES:
            run_recipe(command, rest)
        elif command == "recipes":
            list_recipes()
        elif command == "cp":
            if len(rest) != 2:
                raise ConfigError("usage: alignlab cp PRESET DEST")
            copy_preset(*rest)
        elif command == "eval" and any(arg.startswith("--prompts") for arg in rest):
            from alignlab.eval.cli import main as eval_main

            eval_main(rest)
        elif command == "eval":  # no prompt file: the lab's heldout prompts, scored by gold
            from alignlab.lab.cli import eval_main

            eval_main(rest)
        elif command == "rm-eval":
            from alignlab.eval.rm_cli import main as rm_eval_main

            rm_eval_main(rest)
        elif command == "lab":
            from alignlab.lab.cli import main as lab_main

            lab_main(rest)
        elif command == "serve":
            from alignlab.serve.cli import main as serve_main

            serve_main(rest)
        else:
            raise ConfigError(f"unknown command {command!r}; try: {', '.join([*RECIPES, *tools])}")
    except Exception as err:
        message = user_error_line(err)
        if message is None:
            raise
        print(f"alignlab: {message}", file=sys.stderr)
        return 2
    return 0


MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
"""OSErrors that are the machine's, not alignlab's: full disk or quota, no permission."""


def user_error_line(err: BaseException) -> str | None:
    """The one line printed for a user's or machine's error; None for a bug (a traceback)."""
    from alignlab.data.schema import DataError

    if isinstance(err, ConfigError):
        text = f"config error: {err}"
    elif isinstance(err, DataError):
        text = f"data error: {err}"
    elif isinstance(err, UserInputError):
        text = f"error: {err}"
    elif isinstance(err, OSError) and err.errno in MACHINE_ERRNOS:
        where = f" ({err.filename})" if err.filename else ""
        text = f"error: {err.strerror}{where}"
    elif type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without torch
        detail = " ".join(str(err).split())[:160]
        text = (
            f"error: out of accelerator memory ({detail}); use smaller micro-batches or "
            "sequences, or model.gradient_checkpointing=true"
        )
    else:
        return None
    return " ".join(text.split())  # one line, whatever the message held


if __name__ == "__main__":
    sys.exit(main())
