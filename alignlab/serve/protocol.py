"""The OpenAI request bodies, parsed and checked by hand: every error names its field.

    request = parse_chat(json.loads(body))    # ApiError(400, param="temperature") when wrong

Why not pydantic models through FastAPI: its 422 replies list validation internals, where an
OpenAI client expects a 400 `{"error": {"message", "type", "param", "code"}}` naming the field,
and it would accept fields we cannot honour (tools, penalties, echo) in silence. Here a field
we do not implement is refused when it asks for something (`echo=true`), accepted when it
holds its default (the official clients send some of them as null), and fields that change
nothing we compute (`user`, `metadata`, `store`, ...) are ignored, as OpenAI does.

Log-probs are implemented in OpenAI's two forms, both read into `top_logprobs` (None: none):
chat's `logprobs: true` with `top_logprobs` 0-20 (a `top_logprobs` without `logprobs: true`
is a 400, as OpenAI's), and the legacy completions' `logprobs` 0-5 (the count of most likely
tokens; `false` and null ask for none). A strategy's answer is not one sample of the model,
so the app refuses log-probs with one (`app._complete`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from alignlab.data.templates import Messages

MAX_N = 128
"""Choices per request; more is a batch job, not a request."""
MAX_STOP = 16
"""Stop strings per request (OpenAI allows 4)."""
MAX_TOP_LOGPROBS, MAX_COMPLETION_LOGPROBS = 20, 5
"""OpenAI's limits: chat's `top_logprobs`, the legacy completions' `logprobs`."""
ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(param: str, message: str, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


@dataclass
class GenerationRequest:
    """What a chat or completion request asks for, checked. `prompts`: one per prompt of a
    completion request (a string, or token ids), or the one message list of a chat."""

    model: str
    prompts: list[str | Messages | list[int]]
    max_tokens: int | None
    """None: the endpoint's default (OpenAI: 16 for completions, the rest of the context for
    chat)."""
    max_tokens_param: str
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    strategy: Any = None
    """The request's `alignlab.strategy` spec; None: the server's default."""
    strategy_given: bool = False
    """Whether the request named a strategy (an explicit null or [] turns the default off)."""
    top_logprobs: int | None = None
    """None: no log-probs; k: each answer token's log-prob and the k most likely tokens' at
    its position (chat: `logprobs: true` and `top_logprobs`; completions: `logprobs`)."""


def parse_chat(body: Any) -> GenerationRequest:
    body = _object(body, "body")
    messages = _messages(body.get("messages"))
    max_tokens, param = _max_tokens(body, ("max_completion_tokens", "max_tokens"))
    _refuse_unsupported(body, chat=True)
    request = _common(body, [messages], max_tokens, param)
    request.top_logprobs = _chat_logprobs(body)
    return request


def parse_completion(body: Any) -> GenerationRequest:
    body = _object(body, "body")
    prompts = _prompts(body.get("prompt"))
    max_tokens, param = _max_tokens(body, ("max_tokens",))
    _refuse_unsupported(body, chat=False)
    request = _common(body, prompts, max_tokens, param)
    request.top_logprobs = _completion_logprobs(body)
    return request


# --- fields ---------------------------------------------------------------------------------


def _common(
    body: dict, prompts: list, max_tokens: int | None, max_tokens_param: str
) -> GenerationRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model", "required: the name of a served model (GET /v1/models)")
    alignlab = body.get("alignlab")
    strategy, strategy_given = None, False
    if alignlab is not None:
        alignlab = _object(alignlab, "alignlab")
        unknown = sorted(set(alignlab) - {"strategy"})
        if unknown:
            raise bad_request(f"alignlab.{unknown[0]}", "unknown field (known: strategy)")
        if "strategy" in alignlab:
            strategy, strategy_given = alignlab["strategy"], True
            if strategy is not None and not isinstance(strategy, (str, dict, list)):
                raise bad_request(
                    "alignlab.strategy",
                    "must be a strategy name, an object or a list of them (docs/methods/icl.md)",
                )
    stream_options = body.get("stream_options")
    stream = _boolean(body, "stream", False)
    include_usage = False
    if stream_options is not None:
        stream_options = _object(stream_options, "stream_options")
        include_usage = _boolean(stream_options, "include_usage", False, "stream_options.")
    return GenerationRequest(
        model=model,
        prompts=prompts,
        max_tokens=max_tokens,
        max_tokens_param=max_tokens_param,
        temperature=_number(body, "temperature", 1.0, low=0.0, high=2.0),
        top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0),
        n=_integer(body, "n", 1, low=1, high=MAX_N),
        stop=_stop(body.get("stop")),
        seed=_integer(body, "seed", None, low=-(2**63), high=2**64 - 1),
        stream=stream,
        include_usage=include_usage,
        strategy=strategy,
        strategy_given=strategy_given,
    )


def _object(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise bad_request(param, f"must be a JSON object, got {_kind(value)}", "invalid_type")
    return value


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), type(value).__name__)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(name, f"must be a number, got {_kind(value)}", "invalid_type")
    if not low <= value <= high:
        raise bad_request(name, f"must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # some clients send 64.0
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(name, f"must be an integer, got {_kind(value)}", "invalid_type")
    if not low <= value <= high:
        raise bad_request(name, f"must be between {low} and {high}, got {value}")
    return value


def _boolean(body: dict, name: str, default: bool, prefix: str = "") -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(prefix + name, f"must be a boolean, got {_kind(value)}", "invalid_type")
    return value


def _chat_logprobs(body: dict) -> int | None:
    """Chat: `logprobs` (a boolean) turns them on, `top_logprobs` (0-20) adds alternatives."""
    wanted = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None, low=0, high=MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise bad_request("top_logprobs", "requires logprobs: true", "invalid_value")
    return (top or 0) if wanted else None


def _completion_logprobs(body: dict) -> int | None:
    """Legacy completions: `logprobs` is the count (0-5) of most likely tokens to report."""
    if body.get("logprobs") is False:
        return None
    if body.get("top_logprobs") is not None:
        raise bad_request(
            "top_logprobs",
            "a chat field; a completion's logprobs is the count of most likely tokens (0-5)",
            "unsupported_parameter",
        )
    return _integer(body, "logprobs", None, low=0, high=MAX_COMPLETION_LOGPROBS)


def _max_tokens(body: dict, names: tuple[str, ...]) -> tuple[int | None, str]:
    """The first of `names` given (chat: max_completion_tokens, then the older max_tokens)."""
    for name in names:
        if body.get(name) is not None:
            return _integer(body, name, None, low=1, high=2**31), name
    return None, names[-1]


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad_request("stop", "must be a string or a list of strings", "invalid_type")
    if len(items) > MAX_STOP:
        raise bad_request("stop", f"at most {MAX_STOP} stop strings, got {len(items)}")
    return tuple(dict.fromkeys(s for s in items if s))


def _messages(value: Any) -> Messages:
    if not isinstance(value, list) or not value:
        raise bad_request("messages", "required: a non-empty list of {role, content} objects")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        message = _object(message, where)
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        content = _content(message.get("content"), f"{where}.content", role)
        # The chat templates know "system"; "developer" is OpenAI's newer name for it.
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def _content(value: Any, where: str, role: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            part = _object(part, f"{where}[{j}]")
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(
                    f"{where}[{j}]", "only text parts ({type: text, text: ...}) are supported"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(where, f"must be a string or a list of text parts, got {_kind(value)}")


def _prompts(value: Any) -> list[str | list[int]]:
    """A completion's prompt: a string, a list of strings, token ids, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return list(value)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return [list(value)]
        if all(
            isinstance(p, list)
            and p
            and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            for p in value
        ):
            return [list(p) for p in value]
    raise bad_request(
        "prompt",
        "required: a string, a list of strings, a list of token ids or a list of such lists",
    )


UNSUPPORTED = {
    # name: (values that ask for nothing, what to say)
    "echo": ((None, False), "echo is not supported"),
    "suffix": ((None, ""), "suffix (insertion) is not supported"),
    "presence_penalty": ((None, 0, 0.0), "penalties would change the sampled distribution"),
    "frequency_penalty": ((None, 0, 0.0), "penalties would change the sampled distribution"),
    "tools": ((None,), "tool calls are not supported"),
    "tool_choice": ((None, "none", "auto"), "tool calls are not supported"),
    "functions": ((None,), "function calls are not supported"),
    "function_call": ((None, "none", "auto"), "function calls are not supported"),
}


def _refuse_unsupported(body: dict, chat: bool) -> None:
    for name, (harmless, why) in UNSUPPORTED.items():
        value = body.get(name)
        if isinstance(value, (list, dict)) and not value:
            continue
        if not isinstance(value, (list, dict)) and value in harmless:
            continue
        raise bad_request(name, why, "unsupported_parameter")
    bias = body.get("logit_bias")
    if bias not in (None, {}):
        raise bad_request(
            "logit_bias", "would change the sampled distribution", "unsupported_parameter"
        )
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise bad_request("response_format", "only {type: text}", "unsupported_parameter")
    best_of = body.get("best_of")
    if not chat and best_of is not None and best_of != body.get("n", 1):
        raise bad_request(
            "best_of",
            'use {"alignlab": {"strategy": {"strategy": "best_of_n", ...}}} for best-of-n',
            "unsupported_parameter",
        )
