"""The scheduler's incremental decoding against decoding every row's whole text at every step
(what it did before, and what `generate` does once): the same events (each streamed piece of
text, in order), the same final text, finish reason and token count, on token sequences that
split characters into bytes, stop strings that span tokens, and a decoder that strips the
leading space of a string (SentencePiece's Metaspace), which a window decoded alone would get
wrong."""

import random
import time

import pytest
from tokenizers import SentencePieceBPETokenizer
from transformers import PreTrainedTokenizerFast

from alignlab.icl.base import cut_at_stop
from alignlab.models.tiny import train_tokenizer
from alignlab.serve.scheduler import (
    FINISH_LENGTH,
    FINISH_STOP,
    Job,
    Scheduler,
    _new_row,
    _streamable,
    fast_decoder,
)

TEXTS = [
    "héllo wörld, the café is naïve: 日本語の文章 and an emoji 😀 or two 🙂🙂.",
    "What is the capital of gamma? alpha beta gamma delta — “quoted” ½ ¾ €100",
] * 4


@pytest.fixture(scope="module")
def byte_level():
    return train_tokenizer(TEXTS, vocab_size=320)


@pytest.fixture(scope="module")
def metaspace():
    core = SentencePieceBPETokenizer()
    core.train_from_iterator(TEXTS, vocab_size=200, special_tokens=["<unk>", "<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=core._tokenizer, eos_token="<|endoftext|>")


class HfDecodeOnly:
    """A tokenizer seen only through `decode` (not a fast transformers tokenizer): the
    scheduler then decodes with the tokenizer's own `decode`."""

    def __init__(self, tokenizer):
        self.inner = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id

    def decode(self, ids, skip_special_tokens=False):
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

    def get_vocab(self):
        return self.inner.get_vocab()


def reference(tokenizer, stop_ids, tokens, stop, max_tokens):
    """The events, text, reason and token count of decoding the whole text at every step."""
    events, sent, text, taken = [], "", "", []
    reason = None
    for token in tokens[:max_tokens]:
        taken.append(token)
        if token in stop_ids:
            reason = FINISH_STOP
            break
        text, stopped = cut_at_stop(tokenizer.decode(taken, skip_special_tokens=False), stop)
        if stopped:
            reason = FINISH_STOP
            break
        if len(taken) >= max_tokens:
            reason = FINISH_LENGTH
            break
        shown = _streamable(text, stop)
        if len(shown) > len(sent) and shown.startswith(sent):
            events.append((shown[len(sent) :], False))
            sent = shown
    delta = text[len(sent) :] if text.startswith(sent) else ""
    events.append((delta, True))
    return events, text, reason, len(taken)


def incremental(scheduler, tokens, stop, max_tokens, deltas=True):
    events = []
    job = Job([1], max_tokens, stop=tuple(stop), deltas=deltas)
    job.on_event = lambda j, delta, finished, _: events.append((delta, finished))
    row = _new_row(job)
    for token in tokens:
        if scheduler._advance(row, token, time.monotonic()):
            break
    return events, job.text, job.finish_reason, len(job.tokens)


def cases(tokenizer, stop_ids, seed):
    rng = random.Random(seed)
    vocab = [t for t in range(len(tokenizer)) if t not in stop_ids]
    for text in TEXTS[:2]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        full = tokenizer.decode(ids, skip_special_tokens=False)
        yield ids, (), len(ids)
        yield ids, (), len(ids) - 3
        for _ in range(6):  # stop strings from the text: across token boundaries, any length
            start = rng.randrange(len(full) - 8)
            stop = full[start : start + rng.randint(1, 7)]
            yield ids, (stop, "zzzz"), len(ids)
        yield ids, (full[-2:],), len(ids)  # found at the very last token
        yield ids, ("日本", "本語", "😀"), len(ids)
    for _ in range(8):  # random tokens: bytes of broken characters, U+FFFD in the text
        ids = [rng.choice(vocab) for _ in range(rng.randint(5, 60))]
        full = tokenizer.decode(ids, skip_special_tokens=False)
        stop = (full[len(full) // 2 : len(full) // 2 + 3],) if len(full) > 6 else ()
        yield ids, stop, len(ids)
        yield ids, (), len(ids)


@pytest.mark.parametrize("kind", ["byte_level", "metaspace"])
@pytest.mark.parametrize("direct", [True, False])
def test_incremental_decoding_streams_and_stops_as_decoding_everything(
    tiny_lm, request, kind, direct
):
    model, _ = tiny_lm
    tokenizer = request.getfixturevalue(kind)
    seen = tokenizer if direct else HfDecodeOnly(tokenizer)
    scheduler = Scheduler(model, seen)  # not started: its rows are driven by hand
    if direct:  # the Rust decode, without transformers' wrapper
        wrapped = fast_decoder(HfDecodeOnly(tokenizer))
        assert fast_decoder(tokenizer).__code__ is not wrapped.__code__
    count = 0
    for tokens, stop, max_tokens in cases(tokenizer, scheduler.stop_ids, seed=len(kind)):
        expected = reference(tokenizer, scheduler.stop_ids, tokens, stop, max_tokens)
        assert incremental(scheduler, tokens, stop, max_tokens) == expected, (tokens, stop)
        events, text, reason, taken = incremental(scheduler, tokens, stop, max_tokens, False)
        assert (text, reason, taken) == expected[1:]
        assert events == [(text, True)]  # not streamed: only the end, with the whole text
        count += 1
    assert count > 30


def test_a_long_answer_is_decoded_in_a_bounded_window(tiny_lm, byte_level):
    """A row's decoding window stays small however long the answer (no decode of the whole
    text per step), and the pieces still add up to the whole text."""
    model, _ = tiny_lm
    calls = []
    scheduler = Scheduler(model, byte_level)
    decode = scheduler._decode_ids
    scheduler._decode_ids = lambda ids: calls.append(len(ids)) or decode(ids)
    ids = byte_level.encode(" ".join(TEXTS * 3), add_special_tokens=False)
    events, text, reason, taken = incremental(scheduler, ids, (), len(ids))
    assert reason == FINISH_LENGTH and taken == len(ids) > 300
    assert "".join(delta for delta, _ in events) == text == byte_level.decode(ids)
    assert max(calls[:-1]) <= 40  # the last call is the final text's one decode
