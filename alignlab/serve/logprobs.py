"""Log-probs of sampled tokens: each token's text and bytes, and OpenAI's two reply shapes.

    table = TokenTable(tokenizer, decode, anchor=pad_id)   # id -> (text, bytes), cached
    queue = LogprobQueue(job.logprobs)    # per job: tokens wait until the text shows them
    chat_logprobs(job.logprobs)           # {"content": [{token, logprob, bytes, top_logprobs}]}
    completion_logprobs(job.logprobs)     # {tokens, token_logprobs, top_logprobs, text_offset}

The numbers are log-softmax of the model's raw logits (temperature 1, no top-p), computed by
the scheduler (`Scheduler._logprobs`); this module only names and shapes them.

A token's bytes are the bytes it adds to the answer's UTF-8 text: for a byte-level BPE
(GPT-2, Llama 3, Qwen, the lab's tokenizer) the inverse of its byte-to-character alphabet, so
the bytes of a character split over two tokens are split as the tokens split them; for
SentencePiece's byte fallback (`<0xE6>`) that byte; for other tokenizers the text the token
adds when decoded after another token (so a SentencePiece `▁the` is " the", the space a
decoder strips at the start of a string kept). The concatenated bytes of an answer's tokens
are then its text: exactly for a byte-level BPE (decoded with U+FFFD for invalid bytes, as the
tokenizer decodes them), up to that leading space for SentencePiece. Its `token` is the bytes
decoded, or, when they are not whole UTF-8 characters, `bytes:\\xe6\\x97` as OpenAI writes
such tokens.

Where a token starts in the answer's text is counted in characters of those bytes decoded as
the tokenizer decodes them (invalid bytes replaced by U+FFFD, one per maximal invalid piece:
Python's "replace" and Rust's `from_utf8_lossy` agree): a token that continues a character
begun by the token before it starts at that character.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NO_LOGPROB = -9999.0
"""What OpenAI reports for a token too unlikely to have a number (our -inf: a masked logit)."""
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token: its text, bytes and log-prob, the most likely tokens at its
    position (text, bytes, log-prob; most likely first) and where its bytes start in the
    answer."""

    token: str
    bytes: bytes | None
    """None for an id the tokenizer has no token for (a padded embedding row)."""
    logprob: float
    top: tuple[tuple[str, bytes | None, float], ...]
    start: int
    """Character offset in the answer's text of the character its first byte belongs to."""


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the character that stands for each byte -> byte
    (printable Latin-1 bytes stand for themselves, the rest are shifted past 255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + shift)] = byte
            shift += 1
    return chars


BYTE_ALPHABET = _byte_alphabet()


class TokenTable:
    """id -> (token text, bytes), computed once per id. Used from the scheduler thread,
    holding the tokenizer lock."""

    def __init__(self, tokenizer: Any, decode: Callable[[list[int]], str], anchor: int) -> None:
        self.tokenizer, self.decode, self.anchor = tokenizer, decode, anchor
        self.byte_level, self.byte_fallback = _decoder_kinds(tokenizer)
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self.added = {int(i): str(getattr(t, "content", t)) for i, t in added.items()}
        self._cache: dict[int, tuple[str, bytes | None]] = {}
        self._anchor_text: str | None = None

    def __call__(self, token_id: int) -> tuple[str, bytes | None]:
        found = self._cache.get(token_id)
        if found is None:
            raw = self._bytes(token_id)
            found = self._cache[token_id] = (
                (f"token_id:{token_id}", None) if raw is None else (_text(raw), raw)
            )
        return found

    def _bytes(self, token_id: int) -> bytes | None:
        if token_id in self.added:
            return self.added[token_id].encode()
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return None
        if self.byte_level and all(c in BYTE_ALPHABET for c in piece):
            return bytes(BYTE_ALPHABET[c] for c in piece)
        match = BYTE_PIECE.fullmatch(piece)
        if self.byte_fallback and match:
            return bytes([int(match.group(1), 16)])
        if self._anchor_text is None:
            self._anchor_text = self.decode([self.anchor])
        head, text = self._anchor_text, self.decode([self.anchor, token_id])
        return (text[len(head) :] if text.startswith(head) else self.decode([token_id])).encode()


def _decoder_kinds(tokenizer: Any) -> tuple[bool, bool]:
    """(byte-level, byte fallback): what the fast tokenizer's decoder chain holds."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (AttributeError, TypeError, ValueError):
        return False, False
    kinds = {d.get("type") for d in decoder.get("decoders", [decoder]) if isinstance(d, dict)}
    return "ByteLevel" in kinds, "ByteFallback" in kinds


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _continues(data: bytes) -> bool:
    """Whether `data` is UTF-8 so far: whole characters, possibly ending in a partial one."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data)
    except UnicodeDecodeError:
        return False
    return True


def finite(logprob: float) -> float:
    return logprob if logprob > NO_LOGPROB else NO_LOGPROB


class LogprobQueue:
    """A job's recorded tokens, released into `out` (the job's `logprobs`) once its text
    shows them: a streamed chunk carries the tokens whose text starts in the text sent so far,
    so that a token whose bytes wait for the rest of their character, or for a stop string
    to be ruled out, goes with the chunk that shows it. Stop tokens are not recorded."""

    def __init__(self, out: list[TokenLogprob]) -> None:
        self.out = out
        self.pending: list[TokenLogprob] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.chars = 0
        """Characters the recorded tokens' bytes decoded to (an incomplete one not counted)."""
        self.shown = 0
        """Characters of the answer sent so far."""

    def add(
        self, token: tuple[str, bytes | None], logprob: float,
        top: tuple[tuple[str, bytes | None, float], ...],
    ) -> None:  # fmt: skip
        text, raw = token
        raw_bytes = raw or b""
        start = self.chars
        waiting, _ = self.decoder.getstate()  # the first bytes of a character, if any
        if waiting and not _continues(waiting + raw_bytes[:1]):
            start += 1  # they end as one U+FFFD before this token
        self.chars += len(self.decoder.decode(raw_bytes))
        top = tuple((t, b, finite(lp)) for t, b, lp in top)
        self.pending.append(TokenLogprob(text, raw, finite(logprob), top, start))

    def show(self, delta: str) -> list[TokenLogprob]:
        """The tokens the text sent so far (now `delta` more) shows, not released before."""
        self.shown += len(delta)
        return self._release(self.shown)

    def finish(self, text_chars: int | None) -> list[TokenLogprob]:
        """The rest of the answer's tokens: all of them (None), or those that start before
        `text_chars` (the answer was cut at a stop string: none of the stop's own tokens)."""
        released = self._release(text_chars)
        self.pending = []
        return released

    def _release(self, limit: int | None) -> list[TokenLogprob]:
        count = 0
        for entry in self.pending:
            if limit is not None and entry.start >= limit:
                break
            count += 1
        released, self.pending = self.pending[:count], self.pending[count:]
        self.out.extend(released)
        return released


# --- OpenAI's shapes ------------------------------------------------------------------------


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) `logprobs`: {"content": [...], "refusal": null}."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": None if e.bytes is None else list(e.bytes),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": None if b is None else list(b)}
                    for t, b, lp in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """A completion choice's legacy `logprobs`: per token its text, log-prob, {text: log-prob}
    of the most likely tokens and the sampled one (up to logprobs + 1, as OpenAI's), and its
    character offset in the choice's text."""
    tops = []
    for e in entries:
        top = {}
        for text, _, logprob in e.top:
            top.setdefault(text, logprob)
        top.setdefault(e.token, e.logprob)
        tops.append(top)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": tops,
        "text_offset": [e.start for e in entries],
    }
