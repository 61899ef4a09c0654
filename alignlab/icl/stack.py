"""Strategies stacked, built from a spec as a recipe's config is (unknown keys: "did you mean").

    stack = build_stack([{"strategy": "urial", "k": 3}, {"strategy": "best_of_n", "n": 8,
                          "reward": "runs/rm/final"}])
    answers = stack.answer(Backend(model, tokenizer), queries, Sampling(), seeds=[0, 1])

The first strategy of the list sees the user's query first: here URIAL writes its document and
best-of-n samples n answers to that document from the model. A strategy that does its own
decoding (ARGS) can only be last. A spec is a dict, a list of dicts, or the name of one
strategy with its defaults; `load_stack(path)` reads one from a YAML or JSON file.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError, build, check_all, read_yaml
from alignlab.icl.args import Args
from alignlab.icl.base import Answer, Answerer, Backend, Query, Sampling, Strategy
from alignlab.icl.best_of_n import BestOfN
from alignlab.icl.critique import CritiqueRevise
from alignlab.icl.principles import Principles
from alignlab.icl.retrieved import Retrieved
from alignlab.icl.urial import Urial

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (Principles, Urial, Retrieved, BestOfN, CritiqueRevise, Args)
}


def _strategy_class(
    spec: dict[str, Any] | str, where: str
) -> tuple[type[Strategy], dict[str, Any]]:
    """The class a spec names and the spec's other values."""
    if isinstance(spec, str):
        spec = {"strategy": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'strategy' key, got {spec!r}")
    values = dict(spec)
    name = values.pop("strategy", None)
    if name is None:
        raise ConfigError(f"{where}: no 'strategy' key; one of {', '.join(STRATEGIES)}")
    if name not in STRATEGIES:
        close = difflib.get_close_matches(str(name), list(STRATEGIES), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"{where}.strategy: unknown strategy {name!r}; {hint}(one of {', '.join(STRATEGIES)})"
        )
    return STRATEGIES[name], values


def build_strategy(spec: dict[str, Any] | str, where: str = "strategy") -> Strategy:
    cls, values = _strategy_class(spec, where)
    config = build(cls.Config, values, f"{cls.name}.")
    check_all(config)
    return cls(config)


def check_order(classes: Sequence[type[Strategy]]) -> None:
    for index, cls in enumerate(classes[:-1]):
        if cls.replaces_decoding:
            raise ConfigError(
                f"strategy[{index}] ({cls.name}) decodes itself, so it must be the last of the "
                "stack"
            )


class Stack:
    """Strategies applied in order; the model itself (or the last strategy's decoder) inside."""

    def __init__(self, strategies: Sequence[Strategy]) -> None:
        check_order([type(s) for s in strategies])
        self.strategies = list(strategies)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.strategies]

    def answer(
        self,
        backend: Backend,
        queries: Sequence[Query],
        sampling: Sampling | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Answer]:
        """One answer per query; query i draws from seed `seeds[i]` (default i). Each answer's
        cost is what producing it took, and its seconds are the wall time of the whole call
        shared evenly among the queries."""
        if not queries:
            return []
        sampling = sampling or Sampling()
        seeds = list(range(len(queries))) if seeds is None else list(seeds)
        if len(seeds) != len(queries):
            raise ValueError(f"{len(seeds)} seeds for {len(queries)} queries")
        start = time.perf_counter()
        answers = self._answerer(backend, 0, list(queries))(list(queries), sampling, seeds)
        share = (time.perf_counter() - start) / len(queries)
        for a in answers:
            a.cost.seconds = share
            a.info["strategies"] = self.names
        return answers

    def _answerer(self, backend: Backend, depth: int, originals: list[Query]) -> Answerer:
        if depth == len(self.strategies):
            return backend.plain
        strategy = self.strategies[depth]

        def answerer(
            queries: Sequence[Query], sampling: Sampling, seeds: Sequence[int]
        ) -> list[Answer]:
            # a strategy may call its inner answerer with k queries per original (best-of-n)
            per = len(queries) // len(originals)
            expanded = [o for o in originals for _ in range(per)] if per > 1 else originals
            inner = self._answerer(backend, depth + 1, expanded)
            return strategy.answer(backend, queries, sampling, seeds, inner, expanded)

        return answerer


def build_stack(spec: Any) -> Stack:
    """A Stack from a spec: a strategy name, a dict, or a list of them (empty: the plain model)."""
    if spec is None or spec == [] or spec == "plain":
        return Stack([])
    specs = spec if isinstance(spec, list) else [spec]
    check_order([_strategy_class(s, f"strategy[{i}]")[0] for i, s in enumerate(specs)])
    return Stack([build_strategy(s, f"strategy[{i}]") for i, s in enumerate(specs)])


def load_stack(path: str | Path) -> Stack:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read strategy file {path}: {err.strerror}") from err
    try:
        spec = read_yaml(text)  # JSON is YAML
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML or JSON: {err}") from err
    if isinstance(spec, dict) and "strategies" in spec:
        spec = spec["strategies"]
    try:
        return build_stack(spec)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
