"""Helpers of the judge tests: stub judges and LMs whose verdicts are known in closed form, and
a scripted OpenAI-compatible stub server on 127.0.0.1 that counts what it is sent."""

import contextlib
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import torch
from torch import nn

from alignlab.judges import Judge, JudgeTemplates

# --- judges and LMs with known verdicts ------------------------------------------------

SPLIT_TEMPLATES = JudgeTemplates(
    pairwise="{prompt}|{response_a}|{response_b}",
    pointwise="{prompt}|{response}",
)
"""Templates a stub judge can read back: the fields joined by |."""


class StubJudge(Judge):
    """P("A") = sigmoid(quality(first) - quality(second) + position_logit), quality = the
    response's length: a judge that prefers content (longer) plus a built-in position bias."""

    def __init__(self, position_logit=0.0, content_weight=1.0):
        super().__init__(SPLIT_TEMPLATES)
        self.position_logit = position_logit
        self.content_weight = content_weight
        self.calls = 0

    def verdict_probs(self, conversations, verdicts):
        self.calls += 1
        out = []
        for conversation in conversations:
            parts = conversation[-1]["content"].split("|")
            if len(parts) == 3:  # pairwise
                _, first, second = parts
                z = self.content_weight * (len(first) - len(second)) + self.position_logit
                p = 1 / (1 + math.exp(-z))
                out.append([p, 1 - p])
            else:  # pointwise: all mass on the rating len(response) % K + 1
                k = len(parts[1]) % len(verdicts)
                out.append([1.0 if i == k else 0.0 for i in range(len(verdicts))])
        return out


class FavoursLM(nn.Module):
    """A fake causal LM: next-token logits `logit` for every token that decodes to `letter`
    (" A" or "A"), 0 for all others, whatever the input: a judge that only looks at position."""

    def __init__(self, tokenizer, letter, logit):
        super().__init__()
        self.vocab_size = len(tokenizer)
        favoured = [i for i in range(self.vocab_size) if tokenizer.decode([i]).strip() == letter]
        assert favoured, letter
        self.bias = torch.zeros(self.vocab_size)
        self.bias[favoured] = logit
        self.weight = nn.Parameter(torch.zeros(1))  # so that the model has a device
        self.calls = 0

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0
    ):
        self.calls += 1
        width = 1 if logits_to_keep else input_ids.shape[1]
        logits = self.bias.expand(input_ids.shape[0], width, self.vocab_size).clone()
        return SimpleNamespace(logits=logits)


# --- a scripted OpenAI-compatible stub ----------------------------------------------------


def chat_reply(content="A", top=None, logprobs_field=True):
    """A chat completion body: `content` as the message; `top` {token: probability} as the
    first token's top_logprobs (none when None; `logprobs: null` when logprobs_field is
    False)."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}}
    if top is not None:
        entries = [{"token": t, "logprob": math.log(p)} for t, p in top.items()]
        choice["logprobs"] = {
            "content": [
                {"token": content, "logprob": entries[0]["logprob"], "top_logprobs": entries}
            ]
        }
    elif logprobs_field:
        choice["logprobs"] = None
    choice["finish_reason"] = "length"
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


class Stub:
    """Requests seen (body, headers) and the `respond(index, body)` script, which returns
    (status, body dict or bytes[, headers[, seconds to sleep first]])."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.respond = lambda index, body: (200, chat_reply("A"))
        self.url = ""

    def handle(self, handler):
        length = int(handler.headers.get("Content-Length", 0))
        body = json.loads(handler.rfile.read(length))
        with self.lock:
            index = len(self.requests)
            self.requests.append((body, dict(handler.headers)))
        status, payload, *rest = self.respond(index, body)
        headers = rest[0] if rest else {}
        if len(rest) > 1:
            time.sleep(rest[1])
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass


@contextlib.contextmanager
def stub_server():
    """A Stub serving POST /v1/chat/completions on 127.0.0.1 (a free port); `stub.url` is
    the base URL (ending in /v1)."""
    stub = Stub()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            stub.handle(self)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
