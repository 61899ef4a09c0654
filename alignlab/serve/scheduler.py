"""Continuous batching: one thread owns a model and runs every request's decode loop at once.

    scheduler = Scheduler(model, tokenizer, max_batch=32, max_queue=256)
    scheduler.start()
    scheduler.submit([Job(prompt_ids, max_tokens=64, temperature=0.7, top_p=1.0, seed=3)])

Why one thread per model and our own loop (not HF `generate` per request): a CPU or a GPU
forward over 32 rows costs little more than over one, so the server is fast only when the
requests that are decoding share each forward. Requests arrive at any time, so the batch
changes between steps: each iteration of `_run`

1. admits waiting jobs while there are free rows (`max_batch`): their prompts are prefilled
   together (left-padded) and their KV cache rows are merged into the running batch's cache.
   The two caches have different lengths; the shorter one is left-padded with zeros and its
   attention mask with zeros, so every row keeps its own keys where they were, right-aligned,
   and the padding columns are masked out of attention. Each row carries its own position ids
   (its count of real tokens), so a row's rotary positions do not depend on the padding;
2. samples one token for every row from the logits its last forward left (a newcomer's from
   its prefill), each row with its own temperature, top_p and random numbers; for the rows
   whose request asked for log-probs, also the log-softmax of those logits at the token and
   its top k (`_logprobs`: on the device, for those rows only, one copy to the host);
3. emits the new text of each row (decoded incrementally, a few tokens at a time: `_Row`),
   and finishes rows on a stop token, a stop string, max_tokens, a cancel flag (a client that
   went away), or a deadline; the step's events go out when the next forward reaches the
   output layer, so the HTTP thread handles them while this one multiplies without the GIL;
4. drops finished rows from the cache (`batch_select_indices`) and cuts the leading columns
   that are padding for every remaining row, so one long finished prompt does not make the
   others attend over its width for the rest of their lives;
5. runs one decode forward over the remaining rows.

A row's random numbers are `row_uniforms(seed, max_tokens)`, one per step, fed to
`sample_next_tokens` by inverse CDF exactly as `alignlab.models.decode.decode`, so a lone
request samples what `generate(model, tok, [prompt], seeds=[seed])` samples, and a request
sharing a batch differs from it only by the float rounding of the padded forward.

Caches that cannot be merged (sliding-window or hybrid layers, whose `cumulative_length` and
window masks left padding would break) are batched in cohorts instead: newcomers wait until
the running batch has finished. Exceptions never kill the thread: a prefill that fails is
retried row by row so that only the failing job fails; a failing decode forward fails the
rows that were in it and the scheduler goes on with the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from alignlab.icl.base import cut_at_stop
from alignlab.models.decode import cache_argument, returned_cache, sample_next_tokens
from alignlab.models.forward_inputs import forward_arguments
from alignlab.models.generation import (
    inference_mode,
    left_padded,
    model_device,
    pad_token_id,
    row_uniforms,
    stop_token_ids,
)
from alignlab.models.loading import unwrap_peft
from alignlab.serve.logprobs import LogprobQueue, TokenLogprob, TokenTable

logger = logging.getLogger(__name__)

FINISH_STOP, FINISH_LENGTH = "stop", "length"
"""The finish reasons OpenAI defines; the others below are failures the server reports."""
FINISH_CANCELLED, FINISH_TIMEOUT, FINISH_ERROR = "cancelled", "timeout", "error"


class QueueFull(Exception):
    """No room for the job(s): more than `max_queue` would be waiting."""


@dataclass(eq=False)
class Job:
    """One sequence to sample, and what it produced so far.

    `on_event(job, delta, finished, logprobs)` is called from the scheduler thread with each
    new piece of text (never part of a stop string, never half a UTF-8 character) and once
    with finished=True, after which `done` is set; it must be quick and must not raise.
    `logprobs` is None unless the job asked for them (`top_logprobs`), else the TokenLogprobs
    of the tokens whose text the event shows (at the end: the rest of the answer's). The events
    of a decode step are sent together, while the next forward runs (`Scheduler._step`).
    `cancel` is shared by the jobs of one request, so one flag frees all its rows."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None
    """time.monotonic() after which the job finishes with FINISH_TIMEOUT."""
    on_event: Callable[[Job, str, bool, list[TokenLogprob] | None], None] | None = None
    deltas: bool = True
    """Whether `on_event` wants the text deltas; False: only the finished event (a reply that
    is not streamed), so rows without stop strings are not decoded until they finish."""
    index: int = 0
    """The caller's label (the choice index of an OpenAI reply)."""
    top_logprobs: int | None = None
    """None: no log-probs. k >= 0: record each answer token's log-prob and the k most likely
    tokens' at its position (log-softmax of the raw logits: temperature 1, no top-p)."""

    tokens: list[int] = field(default_factory=list)
    """Sampled token ids, the stop token included when one ended the job."""
    text: str = ""
    """The decoded response without the stop token or the stop string (set when it finishes
    with "stop" or "length": one decode of all its tokens, as `generate` decodes them)."""
    finish_reason: str | None = None
    stopped_by_token: bool = False
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    sent: str = ""
    """The text already given to on_event."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """With `top_logprobs`: the log-probs of the answer's tokens shown so far; once finished
    ("stop" or "length"), of all of them, without the stop token and the tokens a stop string
    cut off (those that start at or after the cut)."""
    logprob_queue: LogprobQueue | None = field(default=None, repr=False)
    """The recorded tokens not in `logprobs` yet (set by the scheduler)."""


@dataclass(eq=False)
class _Row:
    """A job in the running batch: its draws, how far it got, and its incremental decoding.

    The text is decoded a window at a time (as vLLM's detokenizer does): `prefix_text` is the
    decode of tokens[start:read], all of it already in `committed`; each step decodes
    tokens[start:], and what it adds after `prefix_text` is the new text (the tail). The window
    starts LOOKBACK tokens back, so that a token's text is decoded with its left context (byte
    pieces of one character, a leading space a decoder strips at the start of a string), and
    is moved forward when it grows past WINDOW tokens. The tail is committed once it does not
    end in a half character (U+FFFD). A stop string is looked for in the tail and the
    committed text's last characters only (the text before held none), and a job's final text
    is one decode of all its tokens. Rows that neither stream nor have stop strings are not
    decoded until they finish."""

    job: Job
    draws: list[float]  # row_uniforms(seed, max_tokens), one per step
    step: int = 0
    watch: bool = True
    """Decode every step: the job has stop strings or streams its deltas."""
    longest: int = 0
    """Characters of its longest stop string."""
    start: int = 0
    read: int = 0
    prefix_text: str = ""
    committed: str = ""
    whole: bool = False
    """Decode all tokens every step (the window's decode was not a continuation of its
    prefix: a tokenizer whose decoding is not local); the original, exact but O(n) path."""


def _new_row(job: Job) -> _Row:
    if job.top_logprobs is not None:
        job.logprob_queue = LogprobQueue(job.logprobs)
    return _Row(
        job,
        row_uniforms(job.seed, job.max_tokens).tolist(),
        watch=bool(job.stop) or (job.on_event is not None and job.deltas),
        longest=max(map(len, job.stop), default=0),
    )


LOOKBACK, WINDOW = 4, 24
"""Tokens of left context kept in a row's decoding window; the window's most tokens."""


class Scheduler:
    """Owns `model` on a daemon thread; `submit` queues jobs, the thread decodes them."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_batch: int = 32,
        max_queue: int = 256,
        max_prefill_tokens: int = 8192,
        name: str = "model",
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(
                f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.name = name
        self.stop_ids = set(stop_token_ids(model, tokenizer))
        self.pad_id = pad_token_id(tokenizer, sorted(self.stop_ids))
        self.device = model_device(model)
        self.cache_key = cache_argument(model)
        self.keep_last = "logits_to_keep" in forward_arguments(type(unwrap_peft(model)))
        self._decode_ids = fast_decoder(tokenizer)
        self._token_table: TokenTable | None = None
        self.tokenizer_lock = threading.Lock()
        """HF fast tokenizers reset their truncation settings on each call, which races across
        threads ("Already borrowed"): every use of `tokenizer` in the server holds this."""
        self.steps = 0
        """Decode forwards run so far."""
        self.merges = 0
        """Admissions into a batch that was already decoding (cache merges)."""
        self.mergeable: bool | None = None
        """Whether this model's caches can be merged (known after the first prefill)."""
        self._waiting: deque[Job] = deque()
        self._condition = threading.Condition()
        self._paused = False
        self._closing = False
        self._thread: threading.Thread | None = None
        # The running batch; touched only by the scheduler thread.
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (B, W) 1 = a real token
        self._positions: torch.Tensor | None = None  # (B, 1) position of each row's last token
        self._logits: torch.Tensor | None = None  # (B, V) next-token logits of each row
        self._active = 0
        self._outbox: list[tuple[Job, str, bool, list[TokenLogprob] | None]] | None = None
        """Events of the running step, sent when the model reaches its output layer."""
        self._hook: Any = None

    # --- the caller's side ----------------------------------------------------------------

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._run, name=f"serve-{self.name}", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def active_count(self) -> int:
        """Rows in the running batch."""
        return self._active

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def submit(
        self, jobs: Sequence[Job], block: bool = False, timeout: float | None = None
    ) -> None:
        """Queue `jobs` all together or none. Full queue: QueueFull, or with `block` wait for
        room (a strategy's inner samples: their request was already admitted) until `timeout`."""
        if len(jobs) > max(self.max_queue, 1):
            raise QueueFull(f"{len(jobs)} sequences can never fit a queue of {self.max_queue}")
        end = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while len(self._waiting) + len(jobs) > self.max_queue and not (
                # an empty queue always takes one request, so max_queue=0 still serves
                not self._waiting and self._active < self.max_batch
            ):
                left = None if end is None else end - time.monotonic()
                if not block or (left is not None and left <= 0) or self._closing:
                    raise QueueFull(f"{len(self._waiting)} sequences already waiting")
                # Rows finishing free room without a notify (the thread does not take the
                # lock for that), so look again every 50 ms.
                self._condition.wait(0.05 if left is None else min(left, 0.05))
            if self._closing:
                raise QueueFull("the server is shutting down")
            self._waiting.extend(jobs)
            self._condition.notify_all()

    def pause(self) -> None:
        """Admit nothing new (running rows go on): a drain before maintenance, and the tests'
        way to hold requests in the queue."""
        with self._condition:
            self._paused = True

    def resume(self) -> None:
        with self._condition:
            self._paused = False
            self._condition.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; waiting and running jobs finish with an error."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._hook:
            self._hook.remove()
        for job in list(self._waiting):
            self._finish(job, FINISH_ERROR, "the server is shutting down")
        self._waiting.clear()

    @property
    def token_table(self) -> TokenTable:
        """Each token id's text and bytes, for log-probs (built on first use; call holding
        `tokenizer_lock`)."""
        if self._token_table is None:
            self._token_table = TokenTable(self.tokenizer, self._decode_ids, self.pad_id)
        return self._token_table

    # --- the scheduler thread -------------------------------------------------------------

    def _run(self) -> None:
        with inference_mode(self.model), torch.inference_mode():
            while True:
                with self._condition:
                    while (
                        not self._closing and not self._rows and (self._paused or not self._waiting)
                    ):
                        self._condition.wait()
                    if self._closing:
                        break
                    newcomers = self._take_newcomers()
                    if newcomers:
                        self._condition.notify_all()  # room in the queue for blocked submitters
                try:
                    if newcomers:
                        self._admit(newcomers)
                    if self._rows:
                        self._step()
                except Exception as err:  # noqa: BLE001 - a failing forward must not end the thread
                    logger.exception("decode step of %d rows failed", len(self._rows))
                    for row in self._rows:
                        self._finish(row.job, FINISH_ERROR, f"generation failed: {err}")
                    self._reset_batch()
        for row in self._rows:
            self._finish(row.job, FINISH_ERROR, "the server is shutting down")
        self._reset_batch()

    def _take_newcomers(self) -> list[Job]:
        """Jobs to admit now (called holding the condition): as many as there are free rows,
        within `max_prefill_tokens` (at least one); none while paused, or while a cohort of
        unmergeable caches runs."""
        if self._paused or (self._rows and not self.mergeable):
            return []
        free = self.max_batch - len(self._rows)
        taken: list[Job] = []
        budget = self.max_prefill_tokens
        while self._waiting and len(taken) < free:
            job = self._waiting[0]
            if job.cancel.is_set() or _expired(job):
                self._waiting.popleft()
                self._finish(job, FINISH_CANCELLED if job.cancel.is_set() else FINISH_TIMEOUT)
                continue
            if taken and len(job.prompt_ids) > budget:
                break
            budget -= len(job.prompt_ids)
            taken.append(self._waiting.popleft())
        return taken

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill `jobs` and merge them into the running batch; a failing prefill is retried
        job by job so that only the job that fails fails."""
        try:
            self._merge(jobs, *self._prefill(jobs))
        except Exception as err:  # noqa: BLE001
            if len(jobs) == 1:
                logger.exception("prefill failed")
                self._finish(jobs[0], FINISH_ERROR, f"prefill failed: {err}")
                return
            for job in jobs:
                self._admit([job])

    def _prefill(self, jobs: list[Job]) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cache, mask (n, W), positions (n, 1), last logits (n, V)) of the left-padded prompts."""
        input_ids, mask = left_padded([job.prompt_ids for job in jobs], self.pad_id)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **({"logits_to_keep": 1} if self.keep_last else {}),
        )
        cache = returned_cache(output)
        if self.mergeable is None:
            self.mergeable = mergeable(cache)
            if not self.mergeable:
                logger.warning(
                    "%s: its KV cache (%s) cannot be merged; requests are batched in cohorts",
                    self.name, type(cache).__name__,
                )  # fmt: skip
        return cache, mask, positions[:, -1:], output.logits[:, -1, :]

    def _merge(
        self, jobs: list[Job], cache: Any, mask: torch.Tensor, positions: torch.Tensor,
        logits: torch.Tensor,
    ) -> None:  # fmt: skip
        rows = [_new_row(job) for job in jobs]
        if not self._rows:
            self._cache, self._mask, self._positions, self._logits = cache, mask, positions, logits
        else:
            merge_caches(self._cache, cache)
            self.merges += 1
            self._mask = torch.cat(_left_pad_pair(self._mask, mask, dim=1), 0)
            self._positions = torch.cat([self._positions, positions], 0)
            self._logits = torch.cat([self._logits, logits], 0)
        self._rows.extend(rows)
        self._active = len(self._rows)

    def _step(self) -> None:
        """Sample a token for every row, emit, drop finished rows, run the next forward.

        The step's events are held (`_outbox`) until the forward reaches the model's output
        layer, and sent from a pre-hook there (`_send_events`): the listeners' threads (the
        HTTP event loop) then wake while this thread multiplies by the output embedding, the
        longest stretch of a decode step without the GIL, instead of taking the GIL from the
        forward's many small operations just after it started, once per step."""
        self._outbox = []
        try:
            self._decode_step()
        finally:
            self._send_events()

    def _send_events(self, *_: Any) -> None:
        if self._outbox is None or threading.current_thread() is not self._thread:
            return  # another thread's forward through a model shared with this scheduler
        events, self._outbox = self._outbox, None
        for job, delta, finished, logprobs in events or ():
            self._call_listener(job, delta, finished, logprobs)

    def _decode_step(self) -> None:
        tokens = self._sample()
        asking = [p for p, row in enumerate(self._rows) if row.job.top_logprobs is not None]
        sampled, logprobs = self._logprobs(tokens, asking) if asking else (tokens.tolist(), {})
        keep: list[int] = []
        now = time.monotonic()
        with self.tokenizer_lock:
            for position, (row, token) in enumerate(zip(self._rows, sampled)):
                if not self._advance(row, token, now, logprobs.get(position)):
                    keep.append(position)
        if len(keep) < len(self._rows):
            if not keep:
                self._reset_batch()
                return
            # A cache that cannot be pruned keeps its finished rows (their tokens ignored by
            # `_advance`) until the cohort ends: only unmergeable caches, which admit nothing.
            if hasattr(self._cache, "batch_select_indices"):
                self._select(keep)
                tokens = tokens[torch.tensor(keep, device=tokens.device)]
        self._forward(tokens)

    def _sample(self) -> torch.Tensor:
        """(B,) next tokens: each row with its own draw, rows grouped by (temperature, top_p)."""
        rows = self._rows
        draws = torch.tensor(
            [row.draws[min(row.step, row.job.max_tokens - 1)] for row in rows],
            dtype=torch.float64,
        )
        first = rows[0].job
        setting = (first.temperature, first.top_p)
        if all((row.job.temperature, row.job.top_p) == setting for row in rows):
            return sample_next_tokens(self._logits, first.temperature, first.top_p, draws)
        groups: dict[tuple[float, float], list[int]] = {}
        for position, row in enumerate(rows):
            groups.setdefault((row.job.temperature, row.job.top_p), []).append(position)
        tokens = torch.empty(len(rows), dtype=torch.long, device=self._logits.device)
        for (temperature, top_p), positions in groups.items():
            index = torch.tensor(positions, device=self._logits.device)
            tokens[index] = sample_next_tokens(
                self._logits[index], temperature, top_p, draws[index.cpu()]
            )
        return tokens

    def _logprobs(
        self, tokens: torch.Tensor, asking: list[int]
    ) -> tuple[list[int], dict[int, tuple[float, list[tuple[int, float]]]]]:
        """The step's tokens on the host, and for the rows at `asking` (their jobs asked for
        log-probs) the log-prob of the row's token and its job's `top_logprobs` most likely
        (id, log-prob), most likely first.

        Log-softmax of the raw logits, not of the tempered, top-p-cut distribution the token
        was drawn from: the model's probabilities, what a judge or an evaluator reads (and
        what OpenAI reports). Computed on the device for those rows only, the other rows cost
        nothing; everything the host needs comes over in one copy."""
        rows = self._rows
        if len(asking) == len(rows):
            logits, picked = self._logits, tokens
        else:
            index = torch.tensor(asking, device=self._logits.device)
            logits, picked = self._logits[index], tokens[index]
        logps = logits.float().log_softmax(-1)  # (m, V)
        k = min(max(rows[p].job.top_logprobs for p in asking), logps.shape[-1])
        columns = [logps.gather(1, picked.unsqueeze(1))]  # (m, 1)
        if k:
            top = logps.topk(k, dim=-1)  # (m, k) values and ids, most likely first
            columns += [top.values, top.indices]
        # float64 holds float32 values and token ids (< 2**53) exactly: one tensor, one copy
        packed = torch.cat([c.double() for c in columns], 1)  # (m, 1 + 2k)
        host = torch.cat([tokens.double(), packed.flatten()]).tolist()
        count, width = len(rows), 1 + 2 * k
        sampled = [int(t) for t in host[:count]]
        found = {}
        for i, position in enumerate(asking):
            base, wanted = count + i * width, rows[position].job.top_logprobs
            top_values = host[base + 1 : base + 1 + wanted]
            top_ids = host[base + 1 + k : base + 1 + k + wanted]
            found[position] = (host[base], [(int(t), lp) for t, lp in zip(top_ids, top_values)])
        return sampled, found

    def _advance(
        self, row: _Row, token: int, now: float,
        logprob: tuple[float, list[tuple[int, float]]] | None = None,
    ) -> bool:  # fmt: skip
        """Give `token` to `row`'s job (and its log-probs, when the job asked: `_logprobs`);
        True when the job is finished (or was already). Called holding `tokenizer_lock`."""
        job = row.job
        if job.finish_reason is not None or row.step >= job.max_tokens:
            return True
        if job.cancel.is_set():
            self._finish(job, FINISH_CANCELLED)
            return True
        if job.deadline is not None and now > job.deadline:
            self._finish(job, FINISH_TIMEOUT)
            return True
        row.step += 1
        job.tokens.append(token)
        try:
            if job.logprob_queue is not None and logprob is not None and token not in self.stop_ids:
                table, (chosen, top) = self.token_table, logprob
                job.logprob_queue.add(table(token), chosen, tuple((*table(t), lp) for t, lp in top))
            if token in self.stop_ids:
                job.stopped_by_token = True
                job.text = self._decode_ids(job.tokens[:-1])
                self._finish(job, FINISH_STOP)
                return True
            last = row.step >= job.max_tokens
            if row.watch and self._watch(row, emit=not last):
                return True
            if last:
                job.text, stopped = cut_at_stop(self._decode_ids(job.tokens), job.stop)
                self._finish(job, FINISH_STOP if stopped else FINISH_LENGTH)
                return True
        except Exception as err:  # noqa: BLE001 - a token the tokenizer cannot decode
            self._finish(job, FINISH_ERROR, f"cannot decode token {token}: {err}")
            return True
        return False

    def _watch(self, row: _Row, emit: bool) -> bool:
        """Decode `row`'s new token and finish the job on a stop string (True); else emit the
        text that can now be shown (when `emit`: not at the job's last token, whose finish
        sends the rest)."""
        job, tokens = row.job, row.job.tokens
        if row.whole:
            committed, tail = "", self._decode_ids(tokens)
        else:
            text = self._decode_ids(tokens[row.start :])
            if not text.startswith(row.prefix_text):
                row.whole, row.committed = True, ""
                return self._watch(row, emit)
            committed, tail = row.committed, text[len(row.prefix_text) :]
            if tail and not tail.endswith("\ufffd"):
                row.committed = committed + tail
                row.read, row.prefix_text = len(tokens), text
                if row.read - row.start > WINDOW:
                    row.start = row.read - LOOKBACK
                    row.prefix_text = self._decode_ids(tokens[row.start : row.read])
        longest = row.longest
        # The text before the new token held no stop string, so a new one ends in the tail
        # and starts at most longest - 1 characters before it.
        recent = committed[max(len(committed) - longest + 1, 0) :] if longest > 1 else ""
        window = recent + tail
        if job.stop:
            cut, stopped = cut_at_stop(window, job.stop)
            if stopped:
                whole, stopped = cut_at_stop(self._decode_ids(tokens), job.stop)
                job.text = (
                    whole
                    if stopped
                    else (committed + tail)[: len(committed) - len(recent) + len(cut)]
                )
                self._finish(job, FINISH_STOP)
                return True
        if not emit or job.on_event is None or not job.deltas:
            return False
        shown = len(committed) - len(recent) + len(_streamable(window, job.stop))
        if shown > len(job.sent):
            text = committed + tail if row.whole or len(job.sent) < len(committed) else None
            if text is not None:
                if not text.startswith(job.sent):
                    return False
                delta = text[len(job.sent) : shown]
            else:
                delta = tail[len(job.sent) - len(committed) : shown - len(committed)]
            job.sent += delta
            queue = job.logprob_queue
            self._emit(job, delta, False, queue.show(delta) if queue is not None else None)
        return False

    def _finish(self, job: Job, reason: str, error: str | None = None) -> None:
        if job.finish_reason is not None:
            return
        job.finish_reason, job.error = reason, error
        if reason in (FINISH_STOP, FINISH_LENGTH) and job.text.startswith(job.sent):
            delta = job.text[len(job.sent) :]
        else:
            delta = ""
        job.sent += delta
        logprobs = None
        if job.logprob_queue is not None:
            if reason in (FINISH_STOP, FINISH_LENGTH):
                cut = reason == FINISH_STOP and not job.stopped_by_token  # by a stop string
                logprobs = job.logprob_queue.finish(len(job.text) if cut else None)
            else:  # a failed job's reply is an error
                logprobs = job.logprob_queue.finish(0)
        if job.on_event is None:
            job.done.set()
        else:  # done once its listener has heard of the end (after the step's other events)
            self._emit(job, delta, True, logprobs)

    def _emit(
        self, job: Job, delta: str, finished: bool, logprobs: list[TokenLogprob] | None = None
    ) -> None:
        if job.on_event is None:
            return
        if self._outbox is not None and len(job.tokens) > 1:  # a first token goes at once
            self._outbox.append((job, delta, finished, logprobs))
            return
        self._call_listener(job, delta, finished, logprobs)

    def _call_listener(
        self, job: Job, delta: str, finished: bool, logprobs: list[TokenLogprob] | None
    ) -> None:
        try:
            job.on_event(job, delta, finished, logprobs)
        except Exception:  # noqa: BLE001 - a listener gone wrong (its event loop closed)
            logger.exception("event listener of a job failed; cancelling the job")
            job.cancel.set()
        finally:
            if finished:
                job.done.set()

    def _select(self, keep: list[int]) -> None:
        """Keep the rows at `keep`, then cut leading columns that are padding for all of them."""
        index = torch.tensor(keep, device=self._mask.device)
        self._cache.batch_select_indices(index)
        self._rows = [self._rows[p] for p in keep]
        self._mask, self._positions = self._mask[index], self._positions[index]
        self._active = len(self._rows)
        if self.mergeable:
            first = int(self._mask.any(0).int().argmax())
            if first > 0:
                trim_cache(self._cache, first)
                self._mask = self._mask[:, first:]

    def _forward(self, tokens: torch.Tensor) -> None:
        if self._hook is None:
            head = _output_layer(self.model)
            self._hook = head.register_forward_pre_hook(self._send_events) if head else False
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], 1)
        self._positions = self._positions + 1
        output = self.model(
            input_ids=tokens.unsqueeze(1).to(self.device),
            attention_mask=self._mask,
            position_ids=self._positions,
            use_cache=True,
            **{self.cache_key: self._cache},
        )
        self._cache = returned_cache(output)
        self._logits = output.logits[:, -1, :]
        self.steps += 1

    def _reset_batch(self) -> None:
        self._rows, self._cache = [], None
        self._mask = self._positions = self._logits = None
        self._active = 0


def _output_layer(model: nn.Module) -> nn.Module | None:
    """The model's output embedding (its lm_head), where a forward ends."""
    try:
        head = unwrap_peft(model).get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, nn.Module) else None


def fast_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """`tokenizer.decode(ids, skip_special_tokens=False)`, calling the Rust tokenizer
    directly when that is all the HF wrapper would do (a fast tokenizer of transformers 5
    that does not clean up spaces): the wrapper's Python layers cost more than the decode of
    a few tokens, and the scheduler decodes every row at every step."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers: its own decode
        TokenizersBackend = None  # noqa: N806
    backend = getattr(tokenizer, "_tokenizer", None)
    if (
        TokenizersBackend is not None
        and isinstance(tokenizer, TokenizersBackend)
        and type(tokenizer).decode is TokenizersBackend.decode
        and type(tokenizer)._decode is TokenizersBackend._decode
        and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        and callable(getattr(backend, "decode", None))
    ):
        return lambda ids: backend.decode(ids, skip_special_tokens=False)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


def mergeable(cache: Any) -> bool:
    """Whether rows of `cache` can be merged by left padding: a DynamicCache whose every layer
    is a plain full-attention DynamicLayer (keys and values (B, heads, T, head_dim))."""
    return type(cache) is DynamicCache and all(
        type(layer) is DynamicLayer for layer in cache.layers
    )


def merge_caches(running: Any, newcomers: Any) -> None:
    """Append the rows of `newcomers` to `running` in place, left-padding the shorter one's
    sequence axis with zeros (their attention mask columns are 0, so the zeros are never
    attended to). Both are `mergeable`; their widths are those of their attention masks."""
    for layer, new in zip(running.layers, newcomers.layers, strict=True):
        if not new.is_initialized:  # a layer that shares another's cache
            continue
        layer.keys = torch.cat(_left_pad_pair(layer.keys, new.keys, dim=2), 0)
        layer.values = torch.cat(_left_pad_pair(layer.values, new.values, dim=2), 0)


def trim_cache(cache: Any, columns: int) -> None:
    """Drop the first `columns` sequence positions of every layer (padding for every row)."""
    for layer in cache.layers:
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, columns:, :]
            layer.values = layer.values[:, :, columns:, :]


def _left_pad_pair(a: torch.Tensor, b: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`a` and `b` with the shorter one left-padded with zeros along `dim` to the longer."""
    width = max(a.shape[dim], b.shape[dim])
    return _left_pad(a, dim, width - a.shape[dim]), _left_pad(b, dim, width - b.shape[dim])


def _left_pad(tensor: torch.Tensor, dim: int, amount: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim)


def _expired(job: Job) -> bool:
    return job.deadline is not None and time.monotonic() > job.deadline


def _streamable(text: str, stop: Sequence[str]) -> str:
    """The part of `text` that can be sent now: without a trailing half character (decoded as
    U+FFFD until its other bytes come) and without a tail that could begin a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stop:
        for length in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:length]):
                hold = length
                break
    return text[: len(text) - hold]
