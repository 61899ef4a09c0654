"""Pluggable rewards for RL: one spec string -> `fn(prompts, responses, extras) -> rewards`.

    build_reward_fn("runs/rm/final")                       # a reward-model folder
    build_reward_fn("runs/rm-0/final,runs/rm-1/final", aggregate="lcb", k=1.0)   # ensemble
    build_reward_fn("mypkg.rewards:helpful")               # a Python callable
    build_reward_fn("rewards.py:contains_answer")          # a function in a .py file
    build_reward_fn("http://localhost:8000/score")         # an HTTP endpoint

Every reward function built here has the signature

    reward_fn(prompts: list[prompt], responses: list[str], extras: list[dict] | None = None)
        -> list[float]

where a prompt is what the dataset row holds (a string or a message list, not rendered) and
`extras[i]` holds the other keys of sample i's dataset row (e.g. the lab's `family`, `gold`).

Sources:
- reward-model folder(s): `alignlab.eval.reward_ensemble.RewardScorer` (comma-separated
  folders = an ensemble combined by `aggregate`: mean, min, lcb, uwo). Extras are ignored.
- `module:function` / `path.py:function` (`alignlab.eval.cli.resolve_callable`): called once
  per sample as `fn(prompt, response, **extras)`, or, when the function has an attribute
  `batched = True`, once as `fn(prompts, responses, **columns)` with each extra key as a list
  over the batch (TRL's reward-function convention). Extras are passed only as keyword
  arguments the function declares (all of them when it takes `**kwargs`), so a plain
  `fn(prompt, response)` works unchanged.
- `http(s)://...`: POST `{"prompts": [...], "responses": [...]}` (plus `"extras": [...]` when
  the rows have extra keys) as JSON; the answer must be `{"rewards": [...]}` of the same
  length. A timeout, an HTTP error or a malformed answer raises `RewardError` naming the URL.

Every source's output is checked: one finite number per response, else `RewardError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError, option
from alignlab.eval.reward_ensemble import AGGREGATES

RewardFn = Callable[..., list[float]]


@dataclasses.dataclass
class RewardOptions:
    """The reward a recipe optimises or ranks by, and an optional gold reward logged beside it
    (the config sections of the RL recipes, ReST / RAFT and best-of-n extend this)."""

    reward: str = option(
        "", "reward: RM folder(s) (comma = ensemble), module:function, file.py:function, URL"
    )
    reward_aggregate: str = option("mean", "how an RM ensemble combines", choices=AGGREGATES)
    reward_k: float = option(1.0, "penalty weight of reward_aggregate lcb / uwo", min=0)
    reward_timeout: float = option(60.0, "seconds an HTTP reward endpoint may take", min=0)
    gold: str = option("", "optional gold reward, same forms as `reward`; logged, not trained")

    def require_reward(self, name: str) -> None:
        """ConfigError naming the option (`name`, e.g. "rl.reward") when no reward is given."""
        if not self.reward:
            raise ConfigError(
                f"{name} is required: reward-model folder(s), module:function, "
                "path.py:function or an http(s):// URL"
            )

    def build(self, device: Any = None) -> tuple[RewardFn, RewardFn | None]:
        """(reward function, gold function or None)."""
        kwargs = {
            "aggregate": self.reward_aggregate,
            "k": self.reward_k,
            "timeout": self.reward_timeout,
            "device": device,
        }
        gold = build_reward_fn(self.gold, **kwargs) if self.gold else None
        return build_reward_fn(self.reward, **kwargs), gold


class RewardError(RuntimeError):
    """A reward source failed or answered something that is not one number per response."""


def _checked(values: Any, n: int, source: str) -> list[float]:
    try:
        rewards = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise RewardError(f"reward {source}: expected {n} numbers, got {values!r:.200}") from err
    if len(rewards) != n:
        raise RewardError(f"reward {source}: {len(rewards)} rewards for {n} responses")
    for i, value in enumerate(rewards):
        if not math.isfinite(value):
            raise RewardError(f"reward {source}: reward {i} is {value} (not finite)")
    return rewards


def _keyword_filter(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Keep the extras `fn` can take as keyword arguments (all of them with **kwargs)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return lambda extras: {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict
    names = {
        p.name
        for p in list(parameters)[2:]
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return lambda extras: {k: v for k, v in extras.items() if k in names}


def callable_reward(fn: Callable[..., Any], name: str = "") -> RewardFn:
    """A per-sample `fn(prompt, response, **extras)` or batched (`fn.batched = True`)
    `fn(prompts, responses, **columns)` as a reward function (module docstring)."""
    source = name or getattr(fn, "__name__", repr(fn))
    keep = _keyword_filter(fn)
    batched = bool(getattr(fn, "batched", False))

    def reward_fn(
        prompts: Sequence[Any], responses: Sequence[str], extras: Sequence[dict] | None = None
    ) -> list[float]:
        extras = list(extras) if extras is not None else [{} for _ in prompts]
        if batched:
            keys = sorted({key for row in extras for key in row})
            columns = keep({key: [row.get(key) for row in extras] for key in keys})
            values = fn(list(prompts), list(responses), **columns)
        else:
            values = [fn(p, r, **keep(e)) for p, r, e in zip(prompts, responses, extras)]
        return _checked(values, len(responses), source)

    return reward_fn


def http_reward(url: str, timeout: float = 60.0) -> RewardFn:
    """POST JSON to `url` (module docstring); `timeout` seconds per request."""

    def reward_fn(
        prompts: Sequence[Any], responses: Sequence[str], extras: Sequence[dict] | None = None
    ) -> list[float]:
        payload: dict[str, Any] = {"prompts": list(prompts), "responses": list(responses)}
        if extras is not None and any(extras):
            payload["extras"] = list(extras)
        request = urllib.request.Request(
            url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
                body = answer.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode(errors="replace")
            raise RewardError(
                f"reward endpoint {url}: HTTP {err.code} {err.reason}: {detail}"
            ) from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RewardError(
                f"reward endpoint {url}: no answer ({reason}; timeout {timeout:g} s)"
            ) from err
        try:
            rewards = json.loads(body)["rewards"]
        except (ValueError, KeyError, TypeError) as err:
            raise RewardError(
                f'reward endpoint {url}: expected JSON {{"rewards": [...]}}, got {body[:200]!r}'
            ) from err
        return _checked(rewards, len(responses), f"endpoint {url}")

    return reward_fn


def reward_model_reward(
    paths: Sequence[str], aggregate: str = "mean", k: float = 1.0, **scorer_kwargs: Any
) -> RewardFn:
    """Reward-model folder(s) through `RewardScorer` (an ensemble when several)."""
    from alignlab.eval.reward_ensemble import RewardScorer

    scorer = RewardScorer(list(paths), aggregate=aggregate, k=k, **scorer_kwargs)

    def reward_fn(
        prompts: Sequence[Any], responses: Sequence[str], extras: Sequence[dict] | None = None
    ) -> list[float]:
        return _checked(scorer.score_batch(list(prompts), list(responses)), len(responses), "rm")

    reward_fn.scorer = scorer  # type: ignore[attr-defined]
    return reward_fn


def build_reward_fn(
    spec: str,
    *,
    aggregate: str = "mean",
    k: float = 1.0,
    timeout: float = 60.0,
    device: Any = None,
    dtype: str = "fp32",
    batch_size: int = 16,
) -> RewardFn:
    """The reward function of `spec` (see the module docstring for the forms).

    `aggregate` / `k` combine an ensemble of reward-model folders; `device`, `dtype`,
    `batch_size` are where and how reward models run; `timeout` is for HTTP endpoints.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("empty reward spec: give a reward-model folder, module:function or URL")
    if spec.startswith(("http://", "https://")):
        return http_reward(spec, timeout=timeout)
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if all(Path(part).is_dir() for part in parts):
        return reward_model_reward(
            parts, aggregate=aggregate, k=k, device=device, dtype=dtype, batch_size=batch_size
        )
    if ":" in spec:
        from alignlab.eval.cli import resolve_callable

        try:
            fn = resolve_callable(spec)
        except ValueError as err:
            raise ValueError(str(err).replace("--reward ", "reward ")) from err
        return callable_reward(fn, spec)
    missing = [part for part in parts if not Path(part).is_dir()]
    raise ValueError(
        f"reward {spec!r}: {', '.join(missing)} is not a folder; expected reward-model "
        "folder(s), module:function, path.py:function or an http(s):// URL"
    )
