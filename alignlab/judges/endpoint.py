"""An OpenAI-compatible chat-completions endpoint as a judge (OpenAI, vLLM, `alignlab serve`).

    judge = EndpointJudge("http://localhost:8000/v1", "my-judge", cache_dir="runs/judge-cache")
    p = judge.compare(prompts, responses_a, responses_b)

Each judge conversation (`JudgeTemplates`) is one request to `{base_url}/chat/completions`
with max_tokens=1, temperature=0, logprobs=true and top_logprobs=k. The verdict is read

- from the log-probabilities when the reply carries them: the top-k tokens of the first
  position that spell a verdict (`verdict_key`: " A", "A" and "A." are all "A") have their
  probabilities summed per verdict and renormalised over the verdicts (RLAIF, Lee et al. 2023,
  arXiv:2309.00267); a verdict outside the top k counts 0;
- from the text otherwise: the reply's first token as a verdict has probability 1. A server
  that refuses logprobs (HTTP 400 naming them, as `alignlab serve` did before it returned
  log-probs) or answers without them switches this judge to text verdicts for every later
  request (`use_logprobs` becomes False), without asking again.

Pairs are judged in both orders and averaged as every judge does (`alignlab.judges.base`).

Requests run on a pool of `concurrency` threads. A request that times out (`timeout` seconds),
cannot connect, gets HTTP 429 or 5xx, or a malformed reply (no choices, empty content, a
verdict that is not an allowed one) is retried up to `max_retries` times, after
backoff * 2^attempt seconds with jitter (half of it random), or what Retry-After asks, both at
most `max_backoff`; then a JudgeError names the URL, the model and what came back. Other HTTP
errors (401, 404, a 400 not about logprobs) fail at once. The API key is read from the
environment variable `api_key_env` and sent as a Bearer token; it is never logged, shown in an
error or part of the cache key.

With `cache_dir`, every verdict is stored under a hash of the request as the judge first
asks it (base URL, model, messages, max_tokens, temperature, logprobs, top_logprobs and the
allowed verdicts; `alignlab.judges.cache`), so a rerun sends no request at all.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError
from alignlab.data.templates import Messages
from alignlab.judges.base import Judge, JudgeError, verdict_key
from alignlab.judges.cache import VerdictCache, request_key
from alignlab.judges.templates import JudgeTemplates

logger = logging.getLogger(__name__)

_sleep = time.sleep
"""The backoff's sleep (a module attribute, so tests can record the delays instead)."""


class _Retryable(Exception):
    """A failure worth another attempt; `retry_after`: the seconds the server asked to wait."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _excerpt(body: bytes | str, limit: int = 200) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now: a number of seconds or an HTTP date; None if absent
    or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def logprob_verdicts(logprobs: Any, verdicts: Sequence[str]) -> list[float] | None:
    """P(verdict) from a chat completion choice's `logprobs`, renormalised over the verdicts;
    None when it holds no usable log-probs of a first token or no verdict is among them."""
    try:
        first = logprobs["content"][0]
        candidates = {str(e["token"]): float(e["logprob"]) for e in first.get("top_logprobs") or []}
        candidates.setdefault(str(first["token"]), float(first["logprob"]))
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return None
    mass = dict.fromkeys(verdicts, 0.0)
    for token, logprob in candidates.items():
        key = verdict_key(token)
        if key in mass and math.isfinite(logprob):
            mass[key] += math.exp(logprob)  # " A" and "A" are both the verdict A
    total = sum(mass.values())
    if total <= 0:
        return None
    return [mass[v] / total for v in verdicts]


class EndpointJudge(Judge):
    """A judge behind an OpenAI-compatible API (module docstring).

    `base_url` is what the openai client takes (ending in /v1); `requests_sent` counts the
    HTTP requests made, `cache_hits` the verdicts read from `cache_dir`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        templates: JudgeTemplates | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 8,
        cache_dir: str | Path | None = None,
        top_logprobs: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
    ) -> None:
        super().__init__(templates)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"judge base_url {base_url!r} is not an http(s):// URL")
        if timeout <= 0 or max_retries < 0 or concurrency < 1 or not 1 <= top_logprobs <= 20:
            raise ConfigError(
                f"judge endpoint: timeout must be > 0 (got {timeout}), max_retries >= 0 "
                f"(got {max_retries}), concurrency >= 1 (got {concurrency}), top_logprobs in "
                f"1..20 (got {top_logprobs})"
            )
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.top_logprobs = top_logprobs
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.cache = VerdictCache(cache_dir) if cache_dir else None
        self.use_logprobs = True
        """False once the server refused log-probs or answered without them."""
        self.requests_sent = 0
        self.cache_hits = 0
        self._api_key = os.environ.get(api_key_env) or None
        self._lock = threading.Lock()
        self._where = f"judge endpoint {self.url} (model {model!r})"

    def verdict_probs(
        self, conversations: Sequence[Messages], verdicts: Sequence[str]
    ) -> list[list[float]]:
        def one(conversation: Messages) -> list[float]:
            return self._verdict(conversation, verdicts)

        if self.concurrency == 1 or len(conversations) <= 1:
            return [one(c) for c in conversations]
        with ThreadPoolExecutor(min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(one, conversations))

    def _verdict(self, conversation: Messages, verdicts: Sequence[str]) -> list[float]:
        # keyed by the request as first asked, so a judge that fell back to text verdicts
        # finds them again on a rerun that starts by asking for log-probs
        key = request_key(
            {
                "base_url": self.base_url,
                "model": self.model,
                "messages": conversation,
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
                "verdicts": list(verdicts),
            }
        )
        if self.cache is not None:
            cached = _valid_entry(self.cache.get(key), verdicts)
            if cached is not None:
                with self._lock:
                    self.cache_hits += 1
                return cached
        probs, source = self._ask(conversation, verdicts)
        if self.cache is not None:
            self.cache.put(key, {"probs": probs, "verdicts": list(verdicts), "source": source})
        return probs

    def _ask(self, conversation: Messages, verdicts: Sequence[str]) -> tuple[list[float], str]:
        """(P(verdict) per verdict, "logprobs" or "text"), retrying as the docstring says."""
        failures = 0
        while True:
            with_logprobs = self.use_logprobs
            body: dict[str, Any] = {
                "model": self.model,
                "messages": conversation,
                "max_tokens": 1,
                "temperature": 0,
            }
            if with_logprobs:
                body |= {"logprobs": True, "top_logprobs": self.top_logprobs}
            try:
                status, headers, payload = self._post(body)
                if status == 200:
                    return self._read(payload, verdicts, with_logprobs)
                if status == 400 and with_logprobs and b"logprobs" in payload.lower():
                    self._fall_back(f"it refused them: HTTP 400 {_excerpt(payload)}")
                    continue  # not a failure: ask again without them, at once
                if status == 429 or status >= 500:
                    raise _Retryable(
                        f"HTTP {status}: {_excerpt(payload)}",
                        retry_after_seconds(headers.get("Retry-After")),
                    )
                raise JudgeError(f"{self._where}: HTTP {status}: {_excerpt(payload)}")
            except _Retryable as err:
                failures += 1
                if failures > self.max_retries:
                    raise JudgeError(
                        f"{self._where}: {err} (after {failures} attempts, timeout "
                        f"{self.timeout:g} s)"
                    ) from None
                _sleep(self._delay(failures - 1, err.retry_after))

    def _post(self, body: dict[str, Any]) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one POST; no answer at all is a _Retryable."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with self._lock:
            self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                return answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", None) or err
            raise _Retryable(f"no answer ({type(err).__name__}: {reason})") from None

    def _read(
        self, payload: bytes, verdicts: Sequence[str], with_logprobs: bool
    ) -> tuple[list[float], str]:
        """The verdict of a 200 reply; a malformed one is a _Retryable."""
        try:
            reply = json.loads(payload)
        except ValueError:
            raise _Retryable(f"a reply that is not JSON: {_excerpt(payload)}") from None
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Retryable(f"no choices in the reply: {_excerpt(payload)}")
        choice = choices[0]
        if with_logprobs:
            probs = logprob_verdicts(choice.get("logprobs"), verdicts)
            if probs is not None:
                return probs, "logprobs"
            if not _has_logprobs(choice.get("logprobs")):
                self._fall_back("its reply carried none")
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content.strip():
            raise _Retryable(f"empty content in the reply: {_excerpt(payload)}")
        verdict = verdict_key(content)
        if verdict not in verdicts:
            raise _Retryable(
                f"verdict {content!r} is not one of {', '.join(verdicts)}: {_excerpt(payload)}"
            )
        return [1.0 if v == verdict else 0.0 for v in verdicts], "text"

    def _fall_back(self, why: str) -> None:
        with self._lock:
            if not self.use_logprobs:
                return
            self.use_logprobs = False
        logger.warning("%s returns no log-probs (%s): reading text verdicts", self._where, why)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry `attempt` + 1: what Retry-After asks, else exponential
        backoff with half of it random (so concurrent clients do not retry in step)."""
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        base = min(self.max_backoff, self.backoff * 2**attempt)
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not a secret


def _has_logprobs(logprobs: Any) -> bool:
    """Whether a choice's `logprobs` holds any first-token entry at all."""
    return isinstance(logprobs, dict) and bool(logprobs.get("content"))


def _valid_entry(entry: dict[str, Any] | None, verdicts: Sequence[str]) -> list[float] | None:
    """The probabilities of a cache entry, or None when it is not one for these verdicts."""
    if entry is None or entry.get("verdicts") != list(verdicts):
        return None
    probs = entry.get("probs")
    if not isinstance(probs, list) or len(probs) != len(verdicts):
        return None
    if not all(isinstance(p, (int, float)) and math.isfinite(p) and p >= 0 for p in probs):
        return None
    return [float(p) for p in probs] if abs(sum(probs) - 1) <= 1e-6 else None
