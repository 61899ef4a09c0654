"""In-context strategies behind the API: `{"alignlab": {"strategy": [...]}}` or `--strategy`.

    stack = strategies.build([{"strategy": "urial", "k": 3}, {"strategy": "best_of_n", "n": 8}])
    answers = strategies.answer(served, stack, queries, sampling, seeds, cancel, deadline)

A stack answers through a `Backend` whose sampler is `ServedModel.generate`, so its samples
(best-of-n's eight candidates, a critique round) go into the same continuously batched decode
loop as every other request. `Stack.answer` blocks, so the app runs it on a worker thread;
the request's cancel flag and deadline are those of its inner samples, so a client that goes
away stops the strategy's sampling too. Built stacks are kept by spec (a reward model named
in one loads once, not per request).

A spec from a request is untrusted: a strategy option of a `kind` (a reward, a model, a data
file: `alignlab.config.option`) names something the server would load or run, and a reward
may be `module:function`, `file.py:function` or a URL, which is code execution or requests
to any address. So a request may choose strategies and set their other options, but its
spec may not change such a field from its default (`external_fields`; 403) unless the server
runs with `--trust-request-strategies`. The `--strategy` file is the operator's, trusted.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from alignlab.icl.base import Answer, Backend, Query, Sampling
from alignlab.serve.engine import ServedModel

CACHED_STACKS = 8
_stacks: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()


def build_stack_function() -> Any:
    """`alignlab.icl.build_stack`; ImportError (with what to do) while it does not exist."""
    import alignlab.icl as icl

    build = getattr(icl, "build_stack", None)
    if build is None:
        raise ImportError(
            "this alignlab has no alignlab.icl.build_stack: strategies are unavailable"
        )
    return build


def build(spec: Any) -> Any:
    """The Stack of `spec` (a dict or a list of dicts), built once per distinct spec. Unknown
    strategies or keys raise ConfigError (its message says what was meant)."""
    key = json.dumps(spec, sort_keys=True)
    with _lock:
        if key in _stacks:
            _stacks.move_to_end(key)
            return _stacks[key]
    stack = build_stack_function()(spec)
    with _lock:
        _stacks[key] = stack
        while len(_stacks) > CACHED_STACKS:
            _stacks.popitem(last=False)
    return stack


def external_fields(spec: Any) -> list[str]:
    """The options a spec sets away from their default that name something outside the
    config (an `option` with a `kind`): "best_of_n.reward", ... Read from the spec against
    each strategy's Config before anything is built, since building may load what it names.
    Unknown strategies and keys are left to `build` (its ConfigError says what was meant)."""
    from alignlab.icl import STRATEGIES

    found: list[str] = []
    for item in spec if isinstance(spec, list) else [spec]:
        if not isinstance(item, dict) or item.get("strategy") not in STRATEGIES:
            continue
        config = STRATEGIES[item["strategy"]].Config
        values = {k: v for k, v in item.items() if k != "strategy"}
        found.extend(_external(config, values, f"{item['strategy']}."))
    return found


def _external(config: type, values: dict[str, Any], prefix: str) -> list[str]:
    fields = {f.name: f for f in dataclasses.fields(config)}
    found = []
    for key, value in values.items():
        head, _, rest = key.partition(".")  # a dotted key reaches into a section
        f = fields.get(head)
        if f is None:
            continue
        if rest:
            value = {rest: value}
        default = _default(f)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            found.extend(_external(type(default), value, f"{prefix}{head}."))
        elif f.metadata.get("kind") and value != default:
            found.append(prefix + head)
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def is_empty(spec: Any) -> bool:
    """null, {} or []: no strategy (a request turning the server's default off)."""
    return spec is None or spec == [] or spec == {}


def answer(
    served: ServedModel,
    stack: Any,
    queries: Sequence[Query],
    sampling: Sampling,
    seeds: Sequence[int],
    cancel: threading.Event,
    deadline: float | None,
) -> list[Answer]:
    def generate_fn(prompts: Sequence[Query], inner: Sampling, inner_seeds: Sequence[int]) -> list:
        return served.generate(prompts, inner, inner_seeds, cancel, deadline)

    backend = Backend(served.model, served.tokenizer, generate_fn)
    return stack.answer(backend, list(queries), sampling, list(seeds))
