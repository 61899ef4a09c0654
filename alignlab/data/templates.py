"""Chat templates: the fallback ChatML templates, rendering, and the trained assistant spans.

Assistant spans are found without knowing the template: for each assistant turn i, render
messages[:i] with the generation prompt and messages[:i + 1] without it. The trained span
starts where the generation prompt ends and runs as far as the full conversation continues the
second rendering (a template may end a conversation differently from a turn that others
follow: Phi-3 appends EOS), cut right after the last special token that follows the content.

So every assistant turn trains its content and its end-of-turn marker (a special token in every
template we know), and the last turn also what the template appends, through its last special
token, to end the conversation (Phi-3: `<|end|>\n<|endoftext|>`; that EOS is there so that the
model learns to stop, and a model whose only stop token is EOS needs it). Text after the marker
(ChatML's and Gemma's newline) is framing before the next turn: a response ends at its stop
token, so that text is never generated, and it is not trained.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from alignlab.data.schema import DataError

logger = logging.getLogger(__name__)

CHATML_END_OF_TURN = "<|im_end|>"


def _chatml(end_of_turn: str) -> str:
    """ChatML with `end_of_turn` (a jinja expression) closing every message."""
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        + end_of_turn
        + " + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


DEFAULT_CHAT_TEMPLATE: str = _chatml(f"'{CHATML_END_OF_TURN}'")
"""ChatML: `<|im_start|>role\\ncontent<|im_end|>\\n` per message, generation prompt
`<|im_start|>assistant\\n`. The fallback of a tokenizer that has `<|im_end|>` as one token."""

EOS_CHAT_TEMPLATE: str = _chatml("eos_token")
"""ChatML with the tokenizer's EOS in place of `<|im_end|>`: the fallback of a tokenizer
without `<|im_end|>` (GPT-2), whose turns then end with one token that is trained and that
generation stops on, rather than with `<|im_end|>` split into BPE pieces."""

Messages = list[dict[str, Any]]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def fallback_chat_template(tokenizer: Any) -> str:
    """The template of a tokenizer without one: ChatML, each turn ended by a single token that
    is a stop token of `alignlab.models.generation.stop_token_ids`: `<|im_end|>` where the
    tokenizer has it as a token of its own, else its EOS (EOS_CHAT_TEMPLATE).

    Raises a ValueError when it has neither (`ensure_chat_template` adds one).
    """
    if _is_added_token(tokenizer, CHATML_END_OF_TURN):
        return DEFAULT_CHAT_TEMPLATE
    if getattr(tokenizer, "eos_token", None):
        return EOS_CHAT_TEMPLATE
    raise ValueError(
        "the tokenizer has no chat template, no EOS token and no <|im_end|> token, so nothing "
        "can end a turn; load it with alignlab.models.loading.load_tokenizer "
        "(ensure_chat_template adds one)"
    )


def ensure_chat_template(tokenizer: Any) -> None:
    """Give `tokenizer` its `fallback_chat_template` when it has no chat template of its own.

    A tokenizer that has neither an EOS nor `<|im_end|>` gets `<|im_end|>` as a new special
    token and EOS (`load_model` resizes the embeddings for it), so turns end with it.
    """
    if has_chat_template(tokenizer):
        return
    if not _is_added_token(tokenizer, CHATML_END_OF_TURN) and not getattr(
        tokenizer, "eos_token", None
    ):
        tokenizer.add_special_tokens({"eos_token": CHATML_END_OF_TURN})
        logger.info(
            "tokenizer has no chat template and no EOS: added %s as its EOS and end of turn",
            CHATML_END_OF_TURN,
        )
    tokenizer.chat_template = fallback_chat_template(tokenizer)
    if tokenizer.chat_template == EOS_CHAT_TEMPLATE:
        logger.info(
            "tokenizer has no chat template: using ChatML with its EOS %r ending every turn",
            tokenizer.eos_token,
        )


def _is_added_token(tokenizer: Any, text: str) -> bool:
    """Whether `text` is one of the tokenizer's added tokens (encoded whole, never split)."""
    return text in _added_tokens(tokenizer, special_only=False)


def _added_tokens(tokenizer: Any, special_only: bool) -> set[str]:
    try:
        decoder = tokenizer.added_tokens_decoder
    except (AttributeError, NotImplementedError):
        decoder = {}
    tokens = {
        str(getattr(token, "content", token))
        for token in decoder.values()
        if getattr(token, "special", True) or not special_only
    }
    tokens.update(str(t) for t in getattr(tokenizer, "all_special_tokens", None) or ())
    tokens.discard("")
    return tokens


def render_messages(tokenizer: Any, messages: Messages, add_generation_prompt: bool = False) -> str:
    """The chat template applied to `messages` as text (`fallback_chat_template` when the
    tokenizer has none).

    A template that fails (e.g. roles that do not alternate) raises a DataError on 'messages'.
    """
    kwargs = (
        {} if has_chat_template(tokenizer) else {"chat_template": fallback_chat_template(tokenizer)}
    )
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except Exception as err:  # jinja errors, raise_exception() in templates, ...
        raise DataError(
            f"the chat template failed: {type(err).__name__}: {err}",
            field="messages",
            reason="chat template error",
        ) from err
    if not isinstance(text, str):  # some versions return a list for batched input
        text = text[0]
    return text


def render_prompt(tokenizer: Any, prompt: str | Messages) -> str:
    """The text a model is given at generation time: the chat template plus the generation
    prompt for a message list; a plain string unchanged."""
    if isinstance(prompt, str):
        return prompt
    return render_messages(tokenizer, prompt, add_generation_prompt=True)


def chat_segments(
    tokenizer: Any, messages: Messages, train_from: int = 0, train_all: bool = False
) -> list[tuple[str, bool]]:
    """The rendered conversation as [(text, trained?)] segments.

    Trained: every assistant message at index >= `train_from`, from the end of its generation
    prompt through its end-of-turn marker (see the module docstring), or the whole text when
    `train_all`. The texts join to the full rendering of `messages`.

    When a template renders earlier turns differently once later turns follow (it is not
    "prefix-consistent"), the assistant text is searched for in the full rendering instead.
    """
    full = render_messages(tokenizer, messages)
    if train_all:
        return [(full, True)]
    markers = special_token_pattern(tokenizer)
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if i < train_from or message["role"] != "assistant":
            continue
        before = render_messages(tokenizer, messages[:i], add_generation_prompt=True)
        after = render_messages(tokenizer, messages[: i + 1])
        start, end = locate_turn(full, before, after, message["content"], cursor, i, markers)
        segments.append((full[cursor:start], False))
        segments.append((full[start:end], True))
        cursor = end
    segments.append((full[cursor:], False))
    return [(text, trained) for text, trained in segments if text]


def special_token_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex matching the tokenizer's special tokens (longest first), None when it has none.

    Special only: some tokenizers add plain text (Gemma's runs of newlines) as non-special
    tokens, and those are no end-of-turn marker.
    """
    tokens = _added_tokens(tokenizer, special_only=True)
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def locate_turn(
    full: str,
    before: str,
    after: str,
    content: str,
    cursor: int,
    index: int,
    markers: re.Pattern[str] | None,
) -> tuple[int, int]:
    """[start, end) of assistant turn `index` in `full`."""
    for start, turn in _turn_starts(full, before, after, content.strip(), cursor):
        length = _trained_length(turn, full[start:], content, markers)
        if length is not None:
            return start, start + length
    raise DataError(
        "cannot find this assistant message in the rendered chat template, so its tokens "
        "cannot be marked for training",
        field=f"messages[{index}].content",
        reason="chat template error",
    )


def _turn_starts(
    full: str, before: str, after: str, body: str, cursor: int
) -> Iterator[tuple[int, str]]:
    """Where the turn may start in `full`, with its text rendered as the conversation's end,
    in order of preference: the end of the generation prompt (a prefix-consistent template),
    the turn's text found further on, its content found (the text a template puts before the
    content when the turn is last, e.g. a think block, is then left out)."""
    if after.startswith(before):
        turn = after[len(before) :]
        if full.startswith(before) and len(before) >= cursor:
            yield len(before), turn
        found = full.find(turn, cursor)
        if found >= 0:
            yield found, turn
    found, at = full.find(body, cursor), after.rfind(body)
    if body and found >= 0 and at >= 0:
        yield found, after[at:]


def _trained_length(
    turn: str, rest: str, content: str, markers: re.Pattern[str] | None
) -> int | None:
    """How much of `rest` (the full rendering from where an assistant turn starts) is trained,
    None when `rest` does not continue `turn` through its content.

    `turn` is that turn rendered as the end of the conversation. The trained text is their
    common prefix, cut after the last special token that follows the content: a cut there is
    a whole-token boundary (comparing characters alone would cut Phi-3's `<|endoftext|>`
    against `<|user|>` after `<|`) and it drops the framing text after the marker. Without a
    special token after the content (a template of plain-text markers) the common prefix is
    trained whole.
    """
    common = _common_prefix_length(turn, rest)
    body = content.strip()
    at = turn.rfind(body, 0, common)
    if at < 0 or common == 0:
        return None
    tail = at + len(body) if body else 0
    found = list(markers.finditer(turn, tail, common)) if markers is not None else []
    return found[-1].end() if found else common


def _common_prefix_length(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low]; the length is <= high
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low
