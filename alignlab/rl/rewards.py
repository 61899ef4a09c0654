"""Pluggable rewards for RL: one spec string -> `fn(prompts, responses, extras) -> rewards`.

    build_reward_fn("runs/rm/final")                       # a reward-model folder
    build_reward_fn("runs/rm-0/final,runs/rm-1/final", aggregate="lcb", k=1.0)   # ensemble
    build_reward_fn("mypkg.rewards:helpful")               # a Python callable
    build_reward_fn("rewards.py:contains_answer")          # a function in a .py file
    build_reward_fn("http://localhost:8000/score")         # an HTTP endpoint
    build_reward_fn("judge:runs/teacher/final")            # an LLM judge's pointwise score
    build_reward_fn("judge:http://localhost:8000/v1#judge") # ... behind an OpenAI-style API

Every reward function built here has the signature

    reward_fn(prompts: list[prompt], responses: list[str], extras: list[dict] | None = None)
        -> list[float]

where a prompt is what the dataset row holds (a string or a message list, not rendered) and
`extras[i]` holds the other keys of sample i's dataset row (e.g. the lab's `family`, `gold`).

Sources:
- reward-model folder(s): `alignlab.models.reward_ensemble.RewardScorer` (comma-separated
  folders = an ensemble combined by `aggregate`: mean, min, lcb, uwo). Extras are ignored.
  A vision reward-model folder (`alignlab vlm_rm`: `reward_head.json` beside the VLM) is
  `alignlab.models.vlm_reward.VlmRewardFn`, which reads each sample's `images` extra
  (several: an ensemble combined by `aggregate` as for text).
- `module:function` / `path.py:function` (`alignlab.callables.resolve_callable`), called in
  one of three styles (`reward_style`):
  - per sample (the default): `fn(prompt, response, **extras) -> float`, once per response;
  - TRL's batched convention, detected by a parameter named `completions`:
    `fn(prompts=[...], completions=[...], **columns) -> list[float]`, once per batch, where a
    completion is the response string, or `[{"role": "assistant", "content": response}]`
    when the prompt is a message list (as TRL's GRPOTrainer passes them; its
    `completion_ids` and `trainer_state` are not passed);
  - batched by declaration (`fn.batched = True`): `fn(prompts, responses, **columns)`.
  Extras (`columns`: each extra key as a list over the batch) are passed only as keyword
  arguments the function names (all of them when it takes `**kwargs`), so a plain
  `fn(prompt, response)` works unchanged. `check_reward_spec` imports the function and checks
  its signature before any model loads.
- `judge:MODEL` (direct RLAIF, Lee et al. 2023, arXiv:2309.00267): an LLM judge's pointwise
  score (`alignlab.judges`: the expected rating read from its verdict-token probabilities,
  under `judge_principle` if given), MODEL a folder or hub id (a local judge) or
  `http(s)://BASE_URL#MODEL_NAME` (an OpenAI-compatible endpoint, its key from
  OPENAI_API_KEY). Extras are ignored.
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

import torch

from alignlab.callables import resolve_callable
from alignlab.config import ConfigError, UserInputError, option
from alignlab.models.folders import check_model_source
from alignlab.models.reward_ensemble import AGGREGATES, RewardScorer, aggregate_rewards
from alignlab.models.vlm_reward import VlmRewardFn, is_vlm_reward_folder

RewardFn = Callable[..., list[float]]


@dataclasses.dataclass
class RewardOptions:
    """The reward a recipe optimises or ranks by, and an optional gold reward logged beside it
    (the config sections of the RL recipes, ReST / RAFT and best-of-n extend this)."""

    reward: str = option(
        "",
        "reward: RM folder(s) (comma = ensemble), module:function, file.py:function, URL",
        kind="reward",
    )
    reward_aggregate: str = option("mean", "how an RM ensemble combines", choices=AGGREGATES)
    reward_k: float = option(1.0, "penalty weight of reward_aggregate lcb / uwo", min=0)
    reward_timeout: float = option(60.0, "seconds an HTTP reward endpoint may take", min=0)
    gold: str = option(
        "", "optional gold reward, same forms as `reward`; logged, not trained", kind="reward"
    )
    judge_principle: str = option(
        "", "reward judge:MODEL: the principle the judge scores by; empty = its default"
    )

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
            "principle": self.judge_principle,
        }
        gold = build_reward_fn(self.gold, **kwargs) if self.gold else None
        return build_reward_fn(self.reward, **kwargs), gold


class RewardError(UserInputError, RuntimeError):
    """A reward source failed or answered something that is not one number per response."""


def _short(value: Any) -> str:
    """`repr(value)` on one line, cut at 120 characters (arrays print over several lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 120 else text[:117] + "..."


def _number(value: Any, i: int, source: str) -> float:
    returned = f"reward {source} returned {_short(value)}"
    if value is None or isinstance(value, (str, bytes)):
        raise RewardError(f"{returned} for response {i}; expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RewardError(
            f"{returned} ({type(value).__name__}) for response {i}; expected a number"
        ) from None
    if not math.isfinite(number):
        raise RewardError(f"{returned} for response {i} (not finite)")
    return number


def _checked(values: Any, n: int, source: str) -> list[float]:
    """`values` as n finite floats, or a RewardError naming the source and what it returned."""
    try:
        if isinstance(values, (str, bytes, dict)):
            raise TypeError
        items = list(values)
    except TypeError:  # a number, or a 0-d tensor or array
        raise RewardError(
            f"reward {source} returned {_short(values)} ({type(values).__name__}); "
            f"expected a list of {n} numbers, one per response"
        ) from None
    if len(items) != n:
        raise RewardError(f"reward {source} returned {len(items)} rewards for {n} responses")
    return [_number(value, i, source) for i, value in enumerate(items)]


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return None


def reward_style(fn: Callable[..., Any]) -> str:
    """How a reward callable is called (module docstring): "trl" when it has TRL's
    `completions` parameter, "batched" when it declares `fn.batched = True`, else
    "per_sample"."""
    parameters = _parameters(fn) or []
    if any(p.name == "completions" for p in parameters):
        return "trl"
    return "batched" if getattr(fn, "batched", False) else "per_sample"


def check_reward_callable(fn: Callable[..., Any], where: str) -> None:
    """ConfigError when `fn` cannot be called the way its style calls it (`reward_style`)."""
    parameters = _parameters(fn)
    if parameters is None or reward_style(fn) == "trl":
        return
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    takes_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    if len(positional) < 2 and not takes_args:
        name = getattr(fn, "__name__", "the function")
        raise ConfigError(
            f"{where}: {name}{inspect.signature(fn)} cannot take (prompt, response); a reward "
            "function is called per sample as fn(prompt, response, **extras) -> float, or per "
            "batch as fn(prompts, completions, **kwargs) -> list[float] (TRL's convention)"
        )


def _keyword_filter(
    fn: Callable[..., Any], positional: int
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Keep the keyword arguments `fn` takes (all of them with **kwargs); its first
    `positional` parameters are passed by position, so they are not keywords."""
    parameters = _parameters(fn)
    if parameters is None:
        return lambda extras: {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict
    names = {
        p.name
        for p in parameters[positional:]
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return lambda extras: {k: v for k, v in extras.items() if k in names}


def _call(
    fn: Callable[..., Any], source: str, args: tuple, kwargs: dict[str, Any], row_keys: set[str]
) -> Any:
    """`fn(*args, **kwargs)`; a parameter the prompt rows (with keys `row_keys` besides the
    prompt) cannot fill is a RewardError, not a TypeError from inside the call."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as err:
        keys = ", ".join(sorted(row_keys)) or "none"
        raise RewardError(
            f"reward {source}: cannot call it: {err} (the prompt rows' other keys: {keys})"
        ) from None
    except ValueError:  # no signature to check: let the call itself decide
        pass
    return fn(*args, **kwargs)


def callable_reward(fn: Callable[..., Any], name: str = "") -> RewardFn:
    """A Python reward callable as a reward function, called in its `reward_style` (module
    docstring); what it returns is checked (`_checked`)."""
    source = name or getattr(fn, "__name__", repr(fn))
    style = reward_style(fn)
    keep = _keyword_filter(fn, positional=0 if style == "trl" else 2)

    def reward_fn(
        prompts: Sequence[Any], responses: Sequence[str], extras: Sequence[dict] | None = None
    ) -> list[float]:
        extras = list(extras) if extras is not None else [{} for _ in prompts]
        n = len(responses)
        row_keys = {key for row in extras for key in row}
        if style == "per_sample":
            values = [
                _call(fn, source, (p, r), keep(e), row_keys)
                for p, r, e in zip(prompts, responses, extras)
            ]
            for i, value in enumerate(values):
                if isinstance(value, (list, tuple, dict)) or getattr(value, "ndim", 0) > 0:
                    raise RewardError(
                        f"reward {source} returned {_short(value)} ({type(value).__name__}) "
                        f"for response {i}; a per-sample reward function returns one number "
                        "(a batched one names its parameters prompts, completions)"
                    )
            return _checked(values, n, source)
        columns = {key: [row.get(key) for row in extras] for key in sorted(row_keys)}
        if style == "trl":
            # TRL passes a conversational prompt's completion as one assistant message
            completions = [
                [{"role": "assistant", "content": r}] if isinstance(p, list) else r
                for p, r in zip(prompts, responses)
            ]
            kwargs = keep({**columns, "prompts": list(prompts), "completions": completions})
            return _checked(_call(fn, source, (), kwargs, row_keys), n, source)
        values = _call(fn, source, (list(prompts), list(responses)), keep(columns), row_keys)
        return _checked(values, n, source)

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
            detail = " ".join(err.read()[:200].decode(errors="replace").split())
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
    scorer = RewardScorer(list(paths), aggregate=aggregate, k=k, **scorer_kwargs)

    def reward_fn(
        prompts: Sequence[Any], responses: Sequence[str], extras: Sequence[dict] | None = None
    ) -> list[float]:
        return _checked(scorer.score_batch(list(prompts), list(responses)), len(responses), "rm")

    reward_fn.scorer = scorer  # type: ignore[attr-defined]
    return reward_fn


def _vlm_parts(parts: Sequence[str], field: str, spec: str) -> bool:
    """Whether the spec's folders are image-text reward models (`alignlab vlm_rm`); a
    ConfigError when it mixes them with text ones (they read different inputs)."""
    vision = [is_vlm_reward_folder(part) for part in parts]
    if any(vision) and not all(vision):
        raise ConfigError(
            f"{field}={spec}: mixes image-text reward models (vlm_rm) with other folders; an "
            "ensemble is of one kind"
        )
    return all(vision)


def vlm_ensemble_reward(members: Sequence[Any], aggregate: str, k: float) -> RewardFn:
    """Image-text reward models scored one after the other, combined per sample as a text
    ensemble is (`alignlab.models.reward_ensemble.aggregate_rewards`)."""

    def reward_fn(
        prompts: Sequence[Any], responses: Sequence[str], extras: Sequence[dict] | None = None
    ) -> list[float]:
        scores = torch.tensor([member(prompts, responses, extras) for member in members])
        combined = aggregate_rewards(scores, aggregate, k).tolist()
        return _checked(combined, len(responses), "vlm rm ensemble")

    reward_fn.members = members  # type: ignore[attr-defined]
    return reward_fn


JUDGE = "judge:"
"""The prefix of a judge reward spec."""


def judge_reward(
    target: str, principle: str, timeout: float, device: Any, dtype: str, batch_size: int
) -> RewardFn:
    """A judge's pointwise score as the reward: `target` a folder / hub id or URL#MODEL."""
    from alignlab.judges import EndpointJudge, judge_reward_fn, load_local_judge

    if target.startswith(("http://", "https://")):
        base_url, model = target.split("#", 1)
        judge = EndpointJudge(base_url, model, timeout=timeout)
    else:
        judge = load_local_judge(target, dtype=dtype, device=device, batch_size=batch_size)
    fn = judge_reward_fn(judge, principle or None)
    source = f"{JUDGE}{target}"
    return lambda prompts, responses, extras=None: _checked(
        fn(prompts, responses, extras), len(responses), source
    )


def _parts(spec: str) -> list[str]:
    return [part.strip() for part in spec.split(",") if part.strip()]


def check_reward_spec(spec: str, field: str = "reward") -> None:
    """ConfigError when reward spec `spec` (the value of config field `field`) cannot work,
    found without loading a model: reward-model folders are complete sequence-classification
    folders; a callable imports, exists and takes (prompt, response) or TRL's arguments."""
    spec = spec.strip()
    if not spec or spec.startswith(("http://", "https://")):
        return
    if spec.startswith(JUDGE):
        target = spec[len(JUDGE) :]
        if target.startswith(("http://", "https://")):
            if "#" not in target or not target.split("#", 1)[1]:
                raise ConfigError(f"{field}={spec}: an endpoint judge is judge:BASE_URL#MODEL_NAME")
        elif not target:
            raise ConfigError(f"{field}={spec}: name the judge, judge:FOLDER or judge:URL#MODEL")
        elif Path(target).exists():
            check_model_source(target, field, tokenizer=True)
        return
    parts = _parts(spec)
    if _vlm_parts(parts, field, spec):  # checked when they load
        return
    if all(Path(part).is_dir() for part in parts):
        for part in parts:
            check_model_source(part, field, tokenizer=True, reward_model=True)
        return
    if ":" in spec:
        check_reward_callable(resolve_callable(spec, field), f"{field}={spec}")
        return
    missing = [part for part in parts if not Path(part).is_dir()]
    raise ConfigError(
        f"{field}={spec}: {', '.join(missing)} is not a folder; expected reward-model "
        "folder(s), module:function, path.py:function or an http(s):// URL"
    )


def build_reward_fn(
    spec: str,
    *,
    aggregate: str = "mean",
    k: float = 1.0,
    timeout: float = 60.0,
    device: Any = None,
    dtype: str = "fp32",
    batch_size: int = 16,
    principle: str = "",
) -> RewardFn:
    """The reward function of `spec` (see the module docstring for the forms).

    `aggregate` / `k` combine an ensemble of reward-model folders; `device`, `dtype`,
    `batch_size` are where and how reward models (and a local judge) run; `timeout` is for
    HTTP endpoints (and an endpoint judge); `principle` for a judge.
    A spec that cannot work is a ConfigError (`check_reward_spec`).
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty reward spec: give a reward-model folder, module:function or URL")
    check_reward_spec(spec)
    if spec.startswith(("http://", "https://")):
        return http_reward(spec, timeout=timeout)
    if spec.startswith(JUDGE):
        return judge_reward(spec[len(JUDGE) :], principle, timeout, device, dtype, batch_size)
    parts = _parts(spec)
    if _vlm_parts(parts, "reward", spec):  # image-text reward model(s)
        members = [VlmRewardFn(p, batch_size=batch_size, device=device, dtype=dtype) for p in parts]
        return members[0] if len(members) == 1 else vlm_ensemble_reward(members, aggregate, k)
    if all(Path(part).is_dir() for part in parts):
        return reward_model_reward(
            parts, aggregate=aggregate, k=k, device=device, dtype=dtype, batch_size=batch_size
        )
    return callable_reward(resolve_callable(spec, "reward"), spec)
