"""A stream's chunks are written directly (the head rendered once per reply, the choice by
hand); they must be the bytes `json.dumps` makes of the chunk's dict."""

import json
from types import SimpleNamespace

import pytest

from alignlab.serve.app import Reply


def dumped(reply, index, text, reason, role, logprobs=None):
    """The chunk as the dict `Reply` describes, through json.dumps."""
    if reply.chat:
        delta = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta}
    else:
        choice = {"index": index, "text": text or ""}
    choice |= {"logprobs": logprobs, "finish_reason": reason}
    payload = reply._head(True) | {"choices": [choice]}
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@pytest.mark.parametrize("chat", [True, False])
def test_chunks_are_the_json_of_their_dicts(chat):
    reply = Reply(chat, SimpleNamespace(), 'a "model" \\ é', 3)
    texts = [None, "", "a", ' "q" \\ \n\t é 日本 \ufffd \u2028 \x00 \x1f', "\U0001f600"]
    for text in texts:
        for reason in (None, "stop", "length"):
            for role in (False, True):
                for index in (0, 7):
                    chunk = reply.chunk(index, text, reason, role)
                    assert chunk == dumped(reply, index, text, reason, role)
                    assert json.loads(chunk[len("data: ") :])["id"] == reply.id
    entry = {
        "token": 'é "\\',
        "logprob": -0.25,
        "bytes": [195, 169, 32, 34, 92],
        "top_logprobs": [],
    }
    for logprobs in ({"content": [entry], "refusal": None}, {"content": []}):
        chunk = reply.chunk(3, "é", None, False, logprobs)
        assert chunk == dumped(reply, 3, "é", None, False, logprobs)
