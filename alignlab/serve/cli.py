"""`alignlab serve`: an OpenAI-compatible server over one or more model folders.

    alignlab serve runs/sft/final                             # http://127.0.0.1:8000/v1
    alignlab serve --model sft=runs/sft/final --model dpo=runs/dpo/final --port 8080
    ALIGNLAB_KEYS=k1,k2 alignlab serve runs/sft/final --api-key-env ALIGNLAB_KEYS
    alignlab serve runs/sft/final --strategy urial.yaml       # every request through URIAL

The positional folder is served under its folder name; `--model NAME=DIR` names it. A request's
`model` field picks one (GET /v1/models lists them). fastapi and uvicorn are imported here,
only when the server starts, so `import alignlab.cli` stays light (`pip install
"alignlab[serve]"` adds them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from alignlab.config import ArgumentParser, ConfigError, UserInputError

INSTALL_HINT = 'the server needs fastapi and uvicorn: pip install "alignlab[serve]"'


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="alignlab serve",
        description=(__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", nargs="?", help="a model folder (or hub id), served by its name")
    p.add_argument(
        "--model", action="append", default=[], metavar="NAME=DIR", help="a named model; repeatable"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes it")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="rows decoding at once, per model")
    p.add_argument("--max-queue", type=int, default=256, help="rows waiting, per model; then 429")
    p.add_argument(
        "--max-prefill-tokens", type=int, default=8192, help="prompt tokens admitted per step"
    )
    p.add_argument("--max-tokens", type=int, default=4096, help="the most a request may ask")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit")
    p.add_argument("--api-key-env", help="environment variable holding the key(s), comma-separated")
    p.add_argument("--api-key-file", help="file with one accepted key per line")
    p.add_argument("--strategy", help="default in-context strategy: a YAML or JSON file")
    p.add_argument(
        "--no-request-strategies",
        action="store_true",
        help="refuse strategies named in requests (the --strategy default still applies)",
    )
    p.add_argument(
        "--trust-request-strategies",
        action="store_true",
        help="let requests' strategies name rewards, models or files: code the server runs",
    )
    p.add_argument("--strategy-workers", type=int, default=4)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu; default cuda when present")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def model_sources(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """name -> (folder, the argument that gave it), from the positional folder and --model."""
    sources: dict[str, tuple[str, str]] = {}
    entries = []
    if args.model_dir:
        name = Path(args.model_dir.rstrip("/")).name or args.model_dir
        entries.append((name, args.model_dir, "MODEL_DIR"))
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--model {item!r}: expected NAME=DIR")
        entries.append((name, folder, f"--model {name}"))
    for name, folder, field in entries:
        if name in sources:
            raise ConfigError(f"model name {name!r} given twice; name them with --model NAME=DIR")
        sources[name] = (folder, field)
    if not sources:
        raise ConfigError(
            "alignlab serve: give a model folder (alignlab serve DIR or --model NAME=DIR)"
        )
    return sources


def read_strategy(path: str | None) -> Any:
    """The default strategy spec from a YAML or JSON file (a dict or a list of dicts)."""
    if not path:
        return None
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--strategy {path}: cannot read it ({err.strerror})") from err
    try:
        if file.suffix == ".json":
            spec = json.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - json's ValueError, yaml.YAMLError
        raise ConfigError(
            f"--strategy {path}: cannot parse it ({' '.join(str(err).split())})"
        ) from err
    if not isinstance(spec, (dict, list)):
        raise ConfigError(f"--strategy {path}: expected a mapping or a list of mappings")
    return spec


def check_limits(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 0),
        ("--max-tokens", args.max_tokens, 1),
        ("--max-body-bytes", args.max_body_bytes, 1),
        ("--strategy-workers", args.strategy_workers, 1),
        ("--max-prefill-tokens", args.max_prefill_tokens, 1),
        ("--port", args.port, 0),
    ):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0, got {args.timeout}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    check_limits(args)
    sources = model_sources(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise UserInputError(INSTALL_HINT) from err
    from alignlab.serve.app import ServerSettings, create_app
    from alignlab.serve.engine import load_served, tune_malloc
    from alignlab.serve.security import is_loopback, load_api_keys

    keys = load_api_keys(args.api_key_env, args.api_key_file)
    spec = read_strategy(args.strategy)
    if spec is not None:
        from alignlab.serve import strategies

        try:
            strategies.build(spec)  # a wrong spec stops the start, not the first request
        except ImportError as err:
            raise UserInputError(f"--strategy {args.strategy}: {err}") from err
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    log = logging.getLogger("alignlab.serve")
    if not is_loopback(args.host) and not keys:
        log.warning(
            "binding %s with no API key: anyone who can reach this port can use the models "
            "(add --api-key-env or --api-key-file)",
            args.host,
        )
    tune_malloc()  # before the weights: the decode steps' buffers are reused, not remapped
    models = {}
    for name, (folder, field) in sources.items():
        log.info("loading %s from %s", name, folder)
        models[name] = load_served(
            name, folder, args.max_batch, args.max_queue, args.max_prefill_tokens, args.dtype,
            args.device, field,
        )  # fmt: skip
    settings = ServerSettings(
        api_keys=keys,
        max_body_bytes=args.max_body_bytes,
        timeout_s=args.timeout,
        max_tokens=args.max_tokens,
        default_strategy=spec,
        request_strategies=not args.no_request_strategies,
        trust_request_strategies=args.trust_request_strategies,
        strategy_workers=args.strategy_workers,
    )
    app = create_app(models, settings, close_models=True)
    log.info("serving %s on http://%s:%d/v1", ", ".join(models), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
