"""Dataset formats: detect them from a record's keys, validate records, normalise them to `Example`.

The formats are TRL's, so existing datasets load unchanged:

- language_modeling:   {"text": str}
- prompt_completion:   {"prompt": str, "completion": str}
- conversational:      {"messages": [{"role", "content"}, ...]}, or prompt/completion whose values
                       are message lists
- preference:          {"prompt"?, "chosen", "rejected"}, strings or message lists; without a
                       prompt, the prompt is the shared prefix of chosen and rejected (TRL's
                       `extract_prompt`)
- unpaired_preference: {"prompt", "completion", "label": bool}
- ranked:              {"prompt", "responses": [...], "scores": [number, ...]} (same length, >= 2)

Extra keys are ignored. Every problem is a `DataError` naming the file, line and field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from alignlab.data.report import DataReport

FORMATS: tuple[str, ...] = (
    "language_modeling",
    "prompt_completion",
    "conversational",
    "preference",
    "unpaired_preference",
    "ranked",
)
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")
"""Message roles accepted in conversational data."""

_KEYS_HELP = (
    "'text' (language_modeling), 'prompt'+'completion' (prompt_completion), 'messages' "
    "(conversational), 'chosen'+'rejected' (preference), 'prompt'+'completion'+'label' "
    "(unpaired_preference), 'prompt'+'responses'+'scores' (ranked)"
)


@dataclass(frozen=True)
class Record:
    """One raw record and its origin."""

    data: dict[str, Any]
    source: str
    """File path or dataset id."""
    line: int
    """1-based line in a JSONL file; 1-based record / row index otherwise."""

    def where(self) -> str:
        return f"{self.source}:{self.line}"


class DataError(ValueError):
    """A bad record or data source. `str()` is `source:line: field 'x': message`.

    `reason` is the short category counted in `DataReport.skipped` when the record is skipped.
    """

    def __init__(
        self,
        message: str,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        self.reason = reason or message
        super().__init__(self._text())

    def _text(self) -> str:
        text = ""
        if self.source is not None:
            text += f"{self.source}:{self.line}: " if self.line is not None else f"{self.source}: "
        if self.field is not None:
            text += f"field '{self.field}': "
        return text + self.message

    def __str__(self) -> str:
        return self._text()

    def at(self, record: Record, field: str | None = None) -> DataError:
        """This error located at `record` (and `field` when it has none)."""
        return DataError(
            self.message,
            record.source,
            record.line,
            self.field if self.field is not None else field,
            reason=self.reason,
        )


@dataclass(kw_only=True)
class Example:
    """One validated record, normalised. Fields a format does not use are None.

    Strings for standard data, message lists (`[{"role", "content"}, ...]`) for conversational
    data. `messages` holds a whole conversation (format conversational with a `messages` key);
    conversational prompt/completion records use `prompt` and `completion`.
    """

    prompt: str | list[dict[str, Any]] | None = None
    completion: str | list[dict[str, Any]] | None = None
    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    chosen: str | list[dict[str, Any]] | None = None
    rejected: str | list[dict[str, Any]] | None = None
    label: bool | None = None
    responses: list[str] | list[list[dict[str, Any]]] | None = None
    scores: list[float] | None = None
    record: Record

    @property
    def conversational(self) -> bool:
        """Whether the example holds message lists rather than plain strings."""
        if self.messages is not None:
            return True
        for value in (self.prompt, self.completion, self.chosen, self.rejected):
            if value is not None:
                return isinstance(value, list)
        return bool(self.responses) and isinstance(self.responses[0], list)


# --- detection ---


def _is_message_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and isinstance(value[0], dict)
        and "role" in value[0]
    )


def detect_format(record: Record) -> str:
    """The format a record's keys imply (TRL's rules); a DataError when none fits."""
    data = record.data
    keys = set(data)
    if {"responses", "scores"} <= keys:
        return "ranked"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if {"completion", "label"} <= keys:
        return "unpaired_preference"
    if "messages" in keys:
        return "conversational"
    if {"prompt", "completion"} <= keys:
        if _is_message_list(data["prompt"]) or _is_message_list(data["completion"]):
            return "conversational"
        return "prompt_completion"
    if "text" in keys:
        return "language_modeling"
    raise DataError(
        f"cannot tell the dataset format from the keys {sorted(keys)}; expected {_KEYS_HELP}, "
        "or set data.format",
        record.source,
        record.line,
        reason="unknown format",
    )


def detect_dataset_format(records: list[Record]) -> str:
    """The format of the first record whose keys imply one (bad records are skipped here)."""
    first_error = None
    for record in records:
        try:
            return detect_format(record)
        except DataError as err:
            first_error = first_error or err
    if first_error is not None:
        raise first_error
    raise DataError("no records: cannot detect the dataset format")


# --- field validation (errors without a location; `parse_examples` adds it) ---


def _bad(message: str, field: str, reason: str) -> DataError:
    return DataError(message, field=field, reason=reason)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _absent(data: dict[str, Any] | None, key: str) -> str:
    """How a None value reads: "null" when the record holds the key, else "missing"."""
    return "null" if data is not None and key in data else "missing"


def _get(data: dict[str, Any], key: str) -> Any:
    if data.get(key) is None:
        raise _bad(_absent(data, key), key, f"missing {key}")
    return data[key]


def _string(value: Any, field: str, *, allow_empty: bool = False) -> str:
    base = field.split("[")[0].split(".")[0]
    if not isinstance(value, str):
        raise _bad(f"expected a string, got {_type_name(value)}", field, f"non-string {base}")
    if not allow_empty and not value.strip():
        raise _bad("empty string", field, f"empty {base}")
    return value


def _messages(value: Any, field: str, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad(
            f"expected a list of {{role, content}} messages, got {_type_name(value)}",
            field,
            f"non-list {field}",
        )
    if not value and not allow_empty:
        raise _bad("empty list of messages", field, f"empty {field}")
    messages = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _bad(
                f"expected a {{role, content}} object, got {_type_name(message)}",
                where,
                "invalid message",
            )
        role = message.get("role")
        if role is None:
            raise _bad(_absent(message, "role"), f"{where}.role", "missing role")
        if role not in ROLES:
            raise _bad(
                f"unknown role {role!r}; expected one of {', '.join(ROLES)}",
                f"{where}.role",
                "unknown role",
            )
        content = message.get("content")
        if content is None:
            raise _bad(_absent(message, "content"), f"{where}.content", "missing message content")
        if not isinstance(content, str):
            raise _bad(
                f"expected a string, got {_type_name(content)}",
                f"{where}.content",
                "non-string message content",
            )
        if role == "assistant" and not content.strip():
            raise _bad("empty string", f"{where}.content", "empty assistant message")
        # parquet / datasets give struct columns every key, None where absent: drop those
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def _has_assistant(messages: list[dict[str, Any]]) -> bool:
    return any(m["role"] == "assistant" for m in messages)


def _pair(
    prompt: Any,
    value: Any,
    field: str,
    *,
    prompt_optional: bool = False,
    data: dict[str, Any] | None = None,
) -> tuple:
    """(prompt, value) validated: both strings or both message lists (`field` names `value`;
    `data`, the record, tells a null value from a missing one)."""
    if prompt is None and not prompt_optional:
        raise _bad(_absent(data, "prompt"), "prompt", "missing prompt")
    if value is None:
        shown = "null" if "[" in field else _absent(data, field)
        raise _bad(shown, field, f"missing {field.split('[')[0]}")
    base = field.split("[")[0]
    if isinstance(value, list):
        if prompt is not None and not isinstance(prompt, list):
            raise _bad(
                f"a message list, but the prompt is {_type_name(prompt)}; "
                "use message lists for both or strings for both",
                field,
                f"mixed prompt and {base} types",
            )
        if prompt is not None:
            prompt = _messages(prompt, "prompt", allow_empty=True)
        value = _messages(value, field)
        if not _has_assistant(value):
            raise _bad("no assistant message", field, f"no assistant message in {base}")
    else:
        if isinstance(prompt, list):
            raise _bad(
                f"the prompt is a message list but this is {_type_name(value)}; "
                "use message lists for both or strings for both",
                field,
                f"mixed prompt and {base} types",
            )
        if prompt is not None:
            prompt = _string(prompt, "prompt", allow_empty=True)
        value = _string(value, field)
    return prompt, value


# --- one parser per format ---


def _parse_language_modeling(record: Record) -> Example:
    text = _string(_get(record.data, "text"), "text")
    return Example(text=text, record=record)


def _parse_prompt_completion(record: Record) -> Example:
    data = record.data
    prompt, completion = _pair(data.get("prompt"), data.get("completion"), "completion", data=data)
    return Example(prompt=prompt, completion=completion, record=record)


def _parse_conversational(record: Record) -> Example:
    data = record.data
    if "messages" in data:
        messages = _messages(_get(data, "messages"), "messages")
        if not _has_assistant(messages):
            raise _bad("no assistant message to train on", "messages", "no assistant message")
        return Example(messages=messages, record=record)
    prompt = _messages(_get(data, "prompt"), "prompt", allow_empty=True)
    completion = _messages(_get(data, "completion"), "completion")
    if not _has_assistant(completion):
        raise _bad("no assistant message", "completion", "no assistant message in completion")
    return Example(prompt=prompt, completion=completion, record=record)


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) with the shared prefix of chosen and rejected as the prompt.

    Same result as TRL's `extract_prompt` for strings and message lists: a string prompt does
    not keep the space before the first differing character; when one side is a prefix of the
    other the split falls one element before the end of the shorter.
    """
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if idx > 0 and chosen[idx - 1] == " ":  # the space starts the response
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def _parse_preference(record: Record) -> Example:
    data = record.data
    prompt, chosen = _pair(
        data.get("prompt"), data.get("chosen"), "chosen", prompt_optional=True, data=data
    )
    _, rejected = _pair(prompt, data.get("rejected"), "rejected", prompt_optional=True, data=data)
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise _bad(
            "chosen and rejected must both be strings or both be message lists",
            "rejected",
            "mixed chosen and rejected types",
        )
    if chosen == rejected:
        raise _bad(
            "identical to 'chosen'; a pair needs two different responses",
            "rejected",
            "identical chosen and rejected",
        )
    if prompt is None:
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
    return Example(prompt=prompt, chosen=chosen, rejected=rejected, record=record)


def _parse_unpaired_preference(record: Record) -> Example:
    data = record.data
    prompt, completion = _pair(data.get("prompt"), data.get("completion"), "completion", data=data)
    label = _get(data, "label")
    if not isinstance(label, bool):
        raise _bad(
            f"expected a bool (true: desirable, false: undesirable), got {label!r}",
            "label",
            "non-bool label",
        )
    return Example(prompt=prompt, completion=completion, label=label, record=record)


def _parse_ranked(record: Record) -> Example:
    data = record.data
    responses = _get(data, "responses")
    scores = _get(data, "scores")
    if not isinstance(responses, list):
        raise _bad(
            f"expected a list, got {_type_name(responses)}", "responses", "non-list responses"
        )
    if not isinstance(scores, list):
        raise _bad(f"expected a list, got {_type_name(scores)}", "scores", "non-list scores")
    if len(responses) < 2:
        raise _bad(
            f"{len(responses)} response(s); ranking needs at least 2",
            "responses",
            "too few responses",
        )
    if len(scores) != len(responses):
        raise _bad(
            f"{len(scores)} scores for {len(responses)} responses; give one score per response",
            "scores",
            "mismatched responses and scores",
        )
    prompt = _get(data, "prompt")
    parsed = []
    for i, response in enumerate(responses):
        prompt, value = _pair(prompt, response, f"responses[{i}]")
        parsed.append(value)
    values = []
    for i, score in enumerate(scores):
        if (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
        ):
            raise _bad(
                f"expected a finite number, got {score!r}", f"scores[{i}]", "non-numeric score"
            )
        values.append(float(score))
    return Example(prompt=prompt, responses=parsed, scores=values, record=record)


_PARSERS = {
    "language_modeling": _parse_language_modeling,
    "prompt_completion": _parse_prompt_completion,
    "conversational": _parse_conversational,
    "preference": _parse_preference,
    "unpaired_preference": _parse_unpaired_preference,
    "ranked": _parse_ranked,
}


def parse_examples(
    records: list[Record],
    fmt: str = "auto",
    on_bad_example: str = "error",
    report: DataReport | None = None,
) -> tuple[str, list[Example]]:
    """Validate every record against `fmt` (detected from the keys when "auto").

    Returns (format, examples). A bad record raises a `DataError` naming file, line and field,
    or with on_bad_example="skip" is counted in `report.skipped` and left out. Adds the
    records to `report.records` and the examples to `report.used`.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    if on_bad_example not in ("error", "skip"):
        raise ValueError(f"on_bad_example must be 'error' or 'skip', got {on_bad_example!r}")
    report = report if report is not None else DataReport()
    report.records += len(records)
    if fmt == "auto":
        fmt = detect_dataset_format(records)
    parser = _PARSERS[fmt]
    examples = []
    for record in records:
        try:
            examples.append(parser(record))
        except DataError as err:
            located = err.at(record)
            if on_bad_example == "error":
                raise located from None
            report.skip(located.reason, record.where(), str(located))
    report.used += len(examples)
    return fmt, examples
