"""Chat templates: the default ChatML template, rendering, and the trained assistant spans.

Assistant spans are found without knowing the template: for each assistant turn i, render
messages[:i] with the generation prompt and messages[:i + 1] without it; the text between is
what the model must produce for that turn, end-of-turn marker included.
"""

from __future__ import annotations

import logging
from typing import Any

from alignlab.data.schema import DataError

logger = logging.getLogger(__name__)

DEFAULT_CHAT_TEMPLATE: str = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML: `<|im_start|>role\\ncontent<|im_end|>\\n` per message, generation prompt
`<|im_start|>assistant\\n`. Used when a tokenizer has no chat template."""

Messages = list[dict[str, Any]]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def ensure_chat_template(tokenizer: Any) -> None:
    """Give `tokenizer` DEFAULT_CHAT_TEMPLATE when it has no chat template of its own."""
    if has_chat_template(tokenizer):
        return
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in vocab]
    if missing:
        logger.info(
            "tokenizer has no chat template: using ChatML; %s are not single tokens in its "
            "vocabulary and will be split into pieces",
            " and ".join(missing),
        )


def render_messages(tokenizer: Any, messages: Messages, add_generation_prompt: bool = False) -> str:
    """The chat template applied to `messages` as text (ChatML when the tokenizer has none).

    A template that fails (e.g. roles that do not alternate) raises a DataError on 'messages'.
    """
    kwargs = {} if has_chat_template(tokenizer) else {"chat_template": DEFAULT_CHAT_TEMPLATE}
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
    prompt through its end-of-turn marker (or the whole text when `train_all`). The texts join
    to the full rendering of `messages`.

    When a template renders earlier turns differently once later turns follow (it is not
    "prefix-consistent"), the assistant text is searched for in the full rendering instead.
    """
    full = render_messages(tokenizer, messages)
    if train_all:
        return [(full, True)]
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if i < train_from or message["role"] != "assistant":
            continue
        before = render_messages(tokenizer, messages[:i], add_generation_prompt=True)
        after = render_messages(tokenizer, messages[: i + 1])
        start, end = _locate_turn(full, before, after, message["content"], cursor, i)
        segments.append((full[cursor:start], False))
        segments.append((full[start:end], True))
        cursor = end
    segments.append((full[cursor:], False))
    return [(text, trained) for text, trained in segments if text]


def _locate_turn(
    full: str, before: str, after: str, content: str, cursor: int, index: int
) -> tuple[int, int]:
    """[start, end) of assistant turn `index` in `full`."""
    if after.startswith(before) and full.startswith(after) and len(before) >= cursor:
        return len(before), len(after)
    if after.startswith(before) and len(after) > len(before):
        piece = after[len(before) :]
        found = full.find(piece, cursor)
        if found >= 0:
            return found, found + len(piece)
    found = full.find(content, cursor)
    if found < 0:
        raise DataError(
            "cannot find this assistant message in the rendered chat template, so its tokens "
            "cannot be marked for training",
            field=f"messages[{index}].content",
            reason="chat template error",
        )
    end = found + len(content)
    at = after.rfind(content)
    tail = after[at + len(content) :] if at >= 0 else ""
    if tail and full.startswith(tail, end):  # the end-of-turn marker
        end += len(tail)
    return found, end
