"""The HTTP side: OpenAI's routes and reply shapes over the schedulers of the served models.

    app = create_app({"tiny": served}, ServerSettings(api_keys=(b"secret",)))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models[/{id}]` and
`GET /health` (unauthenticated, for liveness probes; it names the models and their queue
lengths, nothing a request sent). A request is parsed (`protocol`), its prompts tokenized as
`generate` tokenizes them, checked against the context and the limits, and turned into one
scheduler `Job` per choice; the scheduler thread calls back with text deltas, which reach this
event loop in batches (`Inbox`: one `call_soon_threadsafe`, one wake-up of the loop, for all
the events of a decode step, not one per token and request). A streamed reply is server-sent
events, one `data: {chunk}` per delta (the chunks that are ready together go out in one write),
then `data: [DONE]`; a reply that is not streamed hears only of its jobs' ends. Log-probs
(`logprobs`) come with the events from the scheduler, per chunk the tokens it shows
(`alignlab.serve.logprobs` shapes them). A client that
goes away cancels its jobs (the stream's `finally`), and their rows leave the batch at the next
step.

Each job sees only its own tokens and reports only its own error, so a failing request fails
alone. Every error reply has OpenAI's shape `{"error": {"message", "type", "param", "code"}}`,
FastAPI's own 404 / 405 / 422 included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignlab.config import UserInputError
from alignlab.icl.base import Sampling
from alignlab.serve import strategies
from alignlab.serve.engine import RequestAborted, ServedModel, choice_seeds
from alignlab.serve.logprobs import TokenLogprob, chat_logprobs, completion_logprobs
from alignlab.serve.protocol import ApiError, GenerationRequest, parse_chat, parse_completion
from alignlab.serve.scheduler import (
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_TIMEOUT,
    Job,
    QueueFull,
)
from alignlab.serve.security import check_api_key, read_body

logger = logging.getLogger(__name__)

FINGERPRINT = "alignlab-serve"
Event = tuple[Job, str, bool, "list[TokenLogprob] | None"]
"""A scheduler event: (job, text delta, finished, the log-probs it shows or None)."""
POLL_S = 0.5
"""How often a waiting non-streamed request looks whether its client is still there."""


@dataclass
class ServerSettings:
    api_keys: tuple[bytes, ...] = ()
    """Accepted keys (`security.load_api_keys`); () accepts every request."""
    max_body_bytes: int = 1 << 20
    timeout_s: float = 600.0
    """Per request, queueing included: 504 (or an error event when streaming) after it."""
    max_tokens: int = 4096
    """The most a request may ask for; also chat's default, within the context."""
    default_strategy: Any = None
    """The `alignlab.strategy` spec of requests that do not give one."""
    request_strategies: bool = True
    """Whether a request may name its own strategy."""
    trust_request_strategies: bool = False
    """Whether a request's strategy may name rewards, models or files (code it would run:
    `strategies.external_fields`)."""
    strategy_workers: int = 4
    """Requests with a strategy answered at once; more wait (up to the queue size)."""


def create_app(
    models: dict[str, ServedModel], settings: ServerSettings, close_models: bool = False
) -> FastAPI:
    """The FastAPI app serving `models` (name -> ServedModel). `close_models`: stop their
    schedulers when the app shuts down (the CLI; tests share models between apps)."""
    executor = ThreadPoolExecutor(settings.strategy_workers, thread_name_prefix="serve-strategy")
    strategy_slots = threading.BoundedSemaphore(
        settings.strategy_workers + max(m.scheduler.max_queue for m in models.values())
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)
        if close_models:
            for served in models.values():
                served.scheduler.close()

    inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inbox] = (
        weakref.WeakKeyDictionary()
    )

    def listener() -> Listener:
        loop = asyncio.get_running_loop()
        inbox = inboxes.get(loop)
        if inbox is None:
            inbox = inboxes[loop] = Inbox(loop)
        return Listener(loop, inbox)

    app = FastAPI(title="alignlab", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.models, app.state.settings = models, settings

    # --- errors, all in OpenAI's shape --------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        error = ApiError(
            err.status_code, f"{request.method} {request.url.path}: {err.detail}", code=code
        )
        return JSONResponse(error.body(), status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = (err.errors() or [{}])[0]
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        error = ApiError(400, f"{param}: {first.get('msg', 'invalid')}", param=param)
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        logger.exception("request %s %s failed", request.method, request.url.path)
        error = ApiError(500, "internal server error", type="server_error", code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    # --- routes -----------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> JSONResponse:
        state = {
            name: {
                "alive": m.scheduler.alive,
                "active": m.scheduler.active_count,
                "waiting": m.scheduler.waiting_count,
            }
            for name, m in models.items()
        }
        ok = all(s["alive"] for s in state.values())
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "models": state}, status_code=200 if ok else 503
        )

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        check_api_key(request.headers, settings.api_keys)
        return JSONResponse({"object": "list", "data": [_model_card(m) for m in models.values()]})

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> JSONResponse:
        check_api_key(request.headers, settings.api_keys)
        return JSONResponse(_model_card(_served(models, name)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await _complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _complete(request, chat=False)

    # --- one request --------------------------------------------------------------------------

    async def _complete(request: Request, chat: bool) -> Any:
        check_api_key(request.headers, settings.api_keys)
        body = await read_body(request, settings.max_body_bytes)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as err:
            raise ApiError(400, f"body: not valid JSON ({err})", code="invalid_json") from err
        req = parse_chat(data) if chat else parse_completion(data)
        served = _served(models, req.model)
        encoded = await run_in_threadpool(_encode, served, req, chat)
        budgets = _max_tokens(served, req, [len(ids) for _, ids in encoded], chat, settings)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        spec = req.strategy if req.strategy_given else settings.default_strategy
        if req.strategy_given and not strategies.is_empty(spec) and not settings.request_strategies:
            raise ApiError(
                403, "this server does not take strategies from requests", param="alignlab.strategy"
            )
        reply = Reply(chat, req, served.name, sum(len(ids) for _, ids in encoded))
        if not strategies.is_empty(spec):
            if req.top_logprobs is not None:
                # best-of-n picks, URIAL prompts, a revision rewrites: no single sample of the
                # model's distribution stands behind the answer, so there are no numbers to give
                raise ApiError(
                    400,
                    "logprobs: not available with a strategy (the answer is not one sample of "
                    'the model); {"alignlab": {"strategy": null}} turns the server\'s off',
                    param="logprobs",
                    code="unsupported_parameter",
                )
            return await _answer_with_strategy(
                request, served, req, spec, encoded, budgets, seed, reply
            )
        cancel = threading.Event()
        deadline = time.monotonic() + settings.timeout_s
        events = listener()
        seeds = choice_seeds(seed, req.n)
        jobs = [
            Job(ids, budget, req.temperature, req.top_p, seeds[k], req.stop, cancel, deadline,
                events, deltas=req.stream, index=p * req.n + k, top_logprobs=req.top_logprobs)
            for p, ((_, ids), budget) in enumerate(zip(encoded, budgets))
            for k in range(req.n)
        ]  # fmt: skip
        if len(jobs) > max(served.scheduler.max_queue, 1):
            raise ApiError(
                400,
                f"n: {len(jobs)} sequences never fit this server's queue of "
                f"{served.scheduler.max_queue}",
                param="n",
            )
        try:
            served.scheduler.submit(jobs)
        except QueueFull as err:
            raise _busy(str(err)) from err
        if req.stream:
            stream = _stream_jobs(jobs, events, cancel, deadline, reply, settings.timeout_s)
            return _event_stream(stream)
        try:
            await _wait_jobs(request, jobs, events, cancel, deadline)
        finally:
            cancel.set()  # a request that ended early (client gone, error) frees its rows
        return JSONResponse(reply.full([(job.text, job.finish_reason) for job in jobs], jobs))

    async def _answer_with_strategy(
        request: Request, served: ServedModel, req: GenerationRequest, spec: Any,
        encoded: list, budgets: list[int], seed: int, reply: Reply,
    ) -> Any:  # fmt: skip
        try:
            external = strategies.external_fields(spec) if req.strategy_given else []
        except ImportError as err:
            raise ApiError(501, str(err), param="alignlab.strategy", code="unsupported") from err
        if external and not settings.trust_request_strategies:
            raise ApiError(
                403,
                f"alignlab.strategy: a request may not set {', '.join(external)} (it names "
                "something the server would load or run); put it in the server's --strategy",
                param="alignlab.strategy",
                code="forbidden",
            )
        try:
            stack = await run_in_threadpool(strategies.build, spec)
        except ImportError as err:
            raise ApiError(501, str(err), param="alignlab.strategy", code="unsupported") from err
        except UserInputError as err:
            raise ApiError(400, f"alignlab.strategy: {err}", param="alignlab.strategy") from err
        if not strategy_slots.acquire(blocking=False):
            raise _busy("too many requests with a strategy waiting")
        cancel = threading.Event()
        deadline = time.monotonic() + settings.timeout_s
        queries = [prompt for prompt in req.prompts for _ in range(req.n)]
        seeds = choice_seeds(seed, req.n) * len(req.prompts)
        sampling = Sampling(
            max_new_tokens=min(budgets), temperature=req.temperature, top_p=req.top_p,
            stop=req.stop, batch_size=served.scheduler.max_batch,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            executor, strategies.answer, served, stack, queries, sampling, seeds, cancel, deadline
        )
        future.add_done_callback(lambda _: strategy_slots.release())
        try:
            answers = await _wait_future(request, future, cancel, deadline)
        finally:
            cancel.set()
        results = [(a.text, FINISH_STOP if a.finished else FINISH_LENGTH) for a in answers]
        extra = {"alignlab": {"strategy": spec, "cost": [a.cost.to_dict() for a in answers]}}
        completion_tokens = sum(a.cost.tokens for a in answers)
        if req.stream:
            return _event_stream(reply.one_shot_stream(results, completion_tokens))
        return JSONResponse(reply.full(results, None, completion_tokens) | extra)

    async def _wait_future(
        request: Request, future: asyncio.Future, cancel: threading.Event, deadline: float
    ) -> Any:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                cancel.set()
                raise _timed_out(settings.timeout_s)
            done, _ = await asyncio.wait({future}, timeout=min(left, POLL_S))
            if done:
                try:
                    return future.result()
                except RequestAborted as err:
                    if err.reason == FINISH_TIMEOUT:
                        raise _timed_out(settings.timeout_s) from err
                    raise ApiError(500, str(err), type="server_error", code=err.reason) from err
                except QueueFull as err:
                    raise _busy(str(err)) from err
                except UserInputError as err:
                    raise ApiError(
                        400, f"alignlab.strategy: {err}", param="alignlab.strategy"
                    ) from err
            if await request.is_disconnected():
                cancel.set()
                raise ApiError(499, "client closed the request", code="client_closed")

    async def _wait_jobs(
        request: Request, jobs: list[Job], listener: Listener, cancel: threading.Event,
        deadline: float,
    ) -> None:  # fmt: skip
        pending = len(jobs)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timed_out(settings.timeout_s)
            if not await listener.wait(min(left, POLL_S)):
                if await request.is_disconnected():
                    raise ApiError(499, "client closed the request", code="client_closed")
                continue
            for job, _, finished, _ in listener.take():
                if finished:
                    pending -= 1
                    _raise_for(job, settings.timeout_s)

    return app


class Inbox:
    """The events of scheduler threads for one event loop, handed over in batches: the first
    event of a batch schedules one `_drain` on the loop (`call_soon_threadsafe`, which wakes the
    loop with a write to its self-pipe); the events that come before the loop runs it join
    that batch. A decode step of 32 streamed rows is then one wake-up, not 32."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[Listener, Event]] = []

    def put(self, listener: Listener, item: Event) -> None:
        with self._lock:
            self._items.append((listener, item))
            if len(self._items) > 1:  # a drain is scheduled already
                return
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: drop the batch, the scheduler cancels
            with self._lock:
                self._items.clear()
            raise

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for listener, item in items:
            listener.deliver(item)


class Listener:
    """The `on_event` of one request's jobs: (job, delta, finished, logprobs) from the
    scheduler thread, through the loop's `Inbox`, to this request's coroutine (`wait`, then
    `take`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inbox: Inbox | None = None) -> None:
        self.loop = loop
        self.inbox = inbox if inbox is not None else Inbox(loop)
        self.items: deque[Event] = deque()
        self._waiter: asyncio.Future | None = None

    def __call__(
        self, job: Job, delta: str, finished: bool, logprobs: list[TokenLogprob] | None
    ) -> None:
        self.inbox.put(self, (job, delta, finished, logprobs))

    def deliver(self, item: Event) -> None:
        """On the loop: queue `item` and wake the waiting coroutine."""
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Whether events are there, waiting up to `timeout` seconds for one (a future and a
        timer, not a task per event as `asyncio.wait_for(queue.get())` would make)."""
        if self.items:
            return True
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(max(timeout, 0.0), _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
        return bool(self.items)

    def take(self) -> list[Event]:
        """The events that arrived, oldest first."""
        items = list(self.items)
        self.items.clear()
        return items


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Reply:
    """The OpenAI shapes of one request's reply: whole, or as stream chunks."""

    def __init__(self, chat: bool, req: GenerationRequest, model: str, prompt_tokens: int) -> None:
        self.chat, self.req, self.model, self.prompt_tokens = chat, req, model, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self._chunk_head: str | None = None

    def logprobs(self, entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
        """A choice's (or one chunk's) `logprobs` in the endpoint's shape; None: not asked."""
        if entries is None or self.req.top_logprobs is None:
            return None
        return chat_logprobs(entries) if self.chat else completion_logprobs(entries)

    def _head(self, chunk: bool) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def full(
        self, results: list[tuple[str, str]], jobs: list[Job] | None, completion_tokens: int = 0
    ) -> dict[str, Any]:
        if jobs is not None:
            completion_tokens = sum(len(job.tokens) for job in jobs)
        choices = []
        for index, (text, reason) in enumerate(results):
            choice: dict[str, Any] = {"index": index}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            logprobs = self.logprobs(jobs[index].logprobs) if jobs is not None else None
            choice |= {"logprobs": logprobs, "finish_reason": reason}
            choices.append(choice)
        return self._head(False) | {"choices": choices, "usage": self.usage(completion_tokens)}

    def chunk(
        self, index: int, text: str | None, reason: str | None = None, role: bool = False,
        logprobs: dict[str, Any] | None = None,
    ) -> str:  # fmt: skip
        """One `data: {chunk}` event: the bytes `_sse` would make of the chunk's dict, but
        with the head rendered once per reply (`_chunk_head`) and the choice written directly:
        a stream sends one per token."""
        if self._chunk_head is None:
            self._chunk_head = _ENCODE(self._head(True))[:-1] + ', "choices": ['
        finish = "null" if reason is None else _ENCODE(reason)
        if self.chat:
            if role:
                delta = '{"role": "assistant", "content": ' + _ENCODE(text or "") + "}"
            elif text:
                delta = '{"content": ' + _ENCODE(text) + "}"
            else:
                delta = "{}"
            choice = f'{{"index": {int(index)}, "delta": {delta}'
        else:
            choice = f'{{"index": {int(index)}, "text": {_ENCODE(text or "")}'
        shown = "null" if logprobs is None else _ENCODE(logprobs)
        tail = f', "logprobs": {shown}, "finish_reason": {finish}}}]}}\n\n'
        return f"data: {self._chunk_head}{choice}{tail}"

    def usage_chunk(self, completion_tokens: int) -> str:
        return _sse(self._head(True) | {"choices": [], "usage": self.usage(completion_tokens)})

    def openings(self, count: int) -> list[str]:
        return [self.chunk(index, None, role=True) for index in range(count)] if self.chat else []

    async def one_shot_stream(
        self, results: list[tuple[str, str]], completion_tokens: int
    ) -> AsyncIterator[str]:
        """A strategy's answers as a stream: per choice its whole text, then its finish."""
        for chunk in self.openings(len(results)):
            yield chunk
        for index, (text, reason) in enumerate(results):
            if text:
                yield self.chunk(index, text)
            yield self.chunk(index, None, reason)
        if self.req.include_usage:
            yield self.usage_chunk(completion_tokens)
        yield "data: [DONE]\n\n"


async def _stream_jobs(
    jobs: list[Job], listener: Listener, cancel: threading.Event, deadline: float, reply: Reply,
    timeout_s: float,
) -> AsyncIterator[str]:  # fmt: skip
    """Server-sent events of running jobs; the events that arrived together go out as one
    piece (one write). Cancelled on disconnect by Starlette; the `finally` then sets the cancel
    flag, and the scheduler drops the rows at its next step."""
    try:
        opening = "".join(reply.openings(len(jobs)))
        if opening:
            yield opening
        pending = len(jobs)
        failed = False
        while pending and not failed:
            left = deadline - time.monotonic()
            if left <= 0 or not await listener.wait(left):
                yield _sse(_timed_out(timeout_s).body())
                break
            out = []
            for job, delta, finished, entries in listener.take():
                if job.finish_reason not in (None, FINISH_STOP, FINISH_LENGTH):
                    out.append(_sse(_job_error(job).body()))
                    failed = True
                    break
                # a chunk's log-probs are those of the tokens its text shows (None: not
                # asked); the finish chunk carries the rare ones left without text
                logprobs = reply.logprobs(entries)
                if delta:
                    out.append(reply.chunk(job.index, delta, logprobs=logprobs))
                if finished:
                    pending -= 1
                    left = logprobs if entries and not delta else None
                    out.append(reply.chunk(job.index, None, job.finish_reason, logprobs=left))
            if not pending and reply.req.include_usage:
                out.append(reply.usage_chunk(sum(len(job.tokens) for job in jobs)))
            if out:
                yield "".join(out)
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode
"""json.dumps(obj, ensure_ascii=False), without building an encoder per call."""


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {_ENCODE(payload)}\n\n"


def _served(models: dict[str, ServedModel], name: str) -> ServedModel:
    if name not in models:
        raise ApiError(
            404,
            f"model {name!r} is not served here; served: {', '.join(models)}",
            param="model",
            code="model_not_found",
        )
    return models[name]


def _model_card(served: ServedModel) -> dict[str, Any]:
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "alignlab"}


def _encode(served: ServedModel, req: GenerationRequest, chat: bool) -> list[tuple[str, list[int]]]:
    """(text, token ids) of each prompt; 400 for a prompt the template or vocabulary refuses."""
    param = "messages" if chat else "prompt"
    encoded = []
    for prompt in req.prompts:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            bad = [t for t in prompt if not 0 <= t < served.vocab_size]
            if bad:
                raise ApiError(
                    400, f"prompt: token id {bad[0]} outside the vocabulary", param="prompt"
                )
        try:
            text, ids = served.encode(prompt)
        except Exception as err:  # noqa: BLE001 - a chat template raising on these messages
            message = " ".join(str(err).split())[:300]
            raise ApiError(
                400, f"{param}: cannot render the prompt ({message})", param=param
            ) from err
        if not ids:
            raise ApiError(
                400, f"{param}: the prompt is empty (no token to start from)", param=param
            )
        encoded.append((text, ids))
    return encoded


def _max_tokens(
    served: ServedModel, req: GenerationRequest, lengths: list[int], chat: bool,
    settings: ServerSettings,
) -> list[int]:  # fmt: skip
    """Each prompt's max_tokens: the request's (checked against the server's cap and the
    context), else OpenAI's default (16 for a completion, the rest of the context for chat,
    both within the cap)."""
    context, param = served.context_length, req.max_tokens_param
    cap = settings.max_tokens
    if req.max_tokens is not None and req.max_tokens > cap:
        raise ApiError(
            400, f"{param}: at most {cap} on this server, got {req.max_tokens}", param=param
        )
    budgets = []
    for length in lengths:
        room = context - length if context else cap
        if room < 1:
            where = "messages" if chat else "prompt"
            raise ApiError(
                400,
                f"{where}: {length} tokens fill the model's context of {context}",
                param=where,
                code="context_length_exceeded",
            )
        if req.max_tokens is None:
            budgets.append(min(cap if chat else 16, room))
        elif req.max_tokens > room:
            raise ApiError(
                400,
                f"{param}: {length} prompt tokens + {param}={req.max_tokens} exceed the model's "
                f"context of {context} tokens",
                param=param,
                code="context_length_exceeded",
            )
        else:
            budgets.append(req.max_tokens)
    return budgets


def _raise_for(job: Job, timeout_s: float) -> None:
    if job.finish_reason in (FINISH_STOP, FINISH_LENGTH):
        return
    if job.finish_reason == FINISH_TIMEOUT:
        raise _timed_out(timeout_s)
    raise _job_error(job)


def _job_error(job: Job) -> ApiError:
    if job.finish_reason == FINISH_TIMEOUT:
        return ApiError(504, "the request timed out", type="timeout", code="timeout")
    return ApiError(
        500,
        job.error or f"generation {job.finish_reason}",
        type="server_error",
        code=job.finish_reason,
    )


def _timed_out(timeout_s: float) -> ApiError:
    return ApiError(
        504,
        f"the request did not finish within the server's {timeout_s:g} s",
        type="timeout",
        code="timeout",
    )


def _busy(why: str) -> ApiError:
    return ApiError(
        429,
        f"the server is busy ({why}); retry shortly",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"Retry-After": "1"},
    )
