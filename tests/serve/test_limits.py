"""What the server refuses, and how: auth, bad fields, sizes, a full queue, timeouts, clients
that go away and requests that fail, each in OpenAI's error shape."""

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import openai
import pytest
from serving import API_KEY, raw_request, tiny_server

CHAT = [{"role": "user", "content": "What is 2 plus 3?"}]


def error_of(status_body):
    status, _, body = status_body
    return status, json.loads(body)["error"]


def test_a_missing_or_wrong_key_is_401(server):
    url = server[0]
    for key in (None, "wrong-key"):
        body = {"model": "tiny", "messages": CHAT, "max_tokens": 2}
        status, error = error_of(raw_request(url, "POST", "/v1/chat/completions", body, key=key))
        assert status == 401 and error["code"] == "invalid_api_key"
        assert error_of(raw_request(url, "GET", "/v1/models", key=key))[0] == 401
    bad = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert raw_request(url, "GET", "/health", key=None)[0] == 200  # probes need no key


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens"),  # over the server's cap
        ({"n": "two"}, "n"),
        ({"stop": 5}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"model": None}, "model"),
        ({"alignlab": {"strateg": []}}, "alignlab.strateg"),
    ],
)
def test_a_wrong_field_is_400_naming_it(server, fields, param):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2} | fields
    status, error = error_of(raw_request(server[0], "POST", "/v1/chat/completions", body))
    assert status == 400 and error["param"] == param and param in error["message"]
    assert error["type"] == "invalid_request_error"


def test_the_openai_client_sees_the_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=CHAT, temperature="hot")
    assert caught.value.body["param"] == "temperature"


def test_prompt_plus_max_tokens_must_fit_the_context(client, server):
    context = server[1].context_length
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="alpha", max_tokens=context)
    assert caught.value.body["param"] == "max_tokens"
    assert caught.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt=[5] * context, max_tokens=1)
    assert caught.value.body["param"] == "prompt"


def test_malformed_json_and_wrong_routes_answer_in_openai_shape(server):
    url = server[0]
    status, error = error_of(raw_request(url, "POST", "/v1/completions", b'{"model": "tiny",'))
    assert status == 400 and error["code"] == "invalid_json"
    status, error = error_of(raw_request(url, "POST", "/v1/completions", b"[1, 2]"))
    assert status == 400 and error["param"] == "body"
    status, error = error_of(raw_request(url, "GET", "/v1/nothing"))
    assert status == 404 and error["code"] == "not_found"
    status, error = error_of(raw_request(url, "GET", "/v1/completions"))
    assert status == 405


def test_a_body_over_the_limit_is_413_by_length_and_by_bytes(tiny_lm):
    with tiny_server(tiny_lm, max_body_bytes=2000) as (url, _):
        big = {"model": "tiny", "prompt": "alpha " * 1000, "max_tokens": 1}
        status, error = error_of(raw_request(url, "POST", "/v1/completions", big))
        assert status == 413 and error["code"] == "request_too_large"
        # no Content-Length: chunked, so only the bytes counted as they come can stop it
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        chunks = iter([json.dumps(big).encode()[i : i + 500] for i in range(0, 6500, 500)])
        connection.request(
            "POST", "/v1/completions", body=chunks, encode_chunked=True,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )  # fmt: skip
        response = connection.getresponse()
        assert response.status == 413
        connection.close()
        small = {"model": "tiny", "prompt": "alpha", "max_tokens": 1}
        assert raw_request(url, "POST", "/v1/completions", small)[0] == 200


def test_a_full_queue_is_429_with_retry_after(tiny_lm):
    with tiny_server(tiny_lm, max_batch=1, max_queue=1) as (url, served):
        served.scheduler.pause()  # hold the scheduler: requests stay queued
        body = {"model": "tiny", "prompt": "alpha", "max_tokens": 3, "seed": 1}
        first = []
        waiter = threading.Thread(
            target=lambda: first.append(raw_request(url, "POST", "/v1/completions", body))
        )
        waiter.start()
        for _ in range(200):
            if served.scheduler.waiting_count == 1:
                break
            time.sleep(0.01)
        status, headers, data = raw_request(url, "POST", "/v1/completions", body)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert json.loads(data)["error"]["code"] == "rate_limit_exceeded"
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(**body)
        served.scheduler.resume()
        waiter.join(30)
        assert first[0][0] == 200  # the queued request is served once the scheduler goes on


def test_a_request_over_its_time_is_504(tiny_lm):
    with tiny_server(tiny_lm, timeout_s=0.3) as (url, served):
        served.scheduler.pause()
        body = {"model": "tiny", "prompt": "alpha", "max_tokens": 3}
        status, error = error_of(raw_request(url, "POST", "/v1/completions", body))
        assert status == 504 and error["code"] == "timeout"
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.APIError):
            list(client.completions.create(**body, stream=True))
        served.scheduler.resume()
        deadline = time.monotonic() + 20  # the expired jobs leave the queue without being decoded
        while time.monotonic() < deadline:
            if served.scheduler.waiting_count == 0 and served.scheduler.active_count == 0:
                break
            time.sleep(0.01)
        assert served.scheduler.waiting_count == 0


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    url, served = server
    scheduler = served.scheduler
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = {
        "model": "tiny",
        "prompt": "alpha beta",
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    connection.request(
        "POST", "/v1/completions", body=json.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )  # fmt: skip
    response = connection.getresponse()
    assert response.status == 200
    response.read1(64)  # the stream is running
    assert scheduler.active_count == 1
    steps = scheduler.steps
    connection.sock.shutdown(2)
    connection.close()
    deadline = time.monotonic() + 20  # a loaded machine; the step count below is the check
    while scheduler.active_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.active_count == 0
    assert scheduler.steps - steps < 1000  # it stopped long before its 1500 tokens


def test_a_failing_request_fails_alone_and_the_scheduler_goes_on(tiny_lm, client):
    """A prompt whose prefill raises gets a 500; a request batched with it is answered, and
    the scheduler thread serves the next request."""
    model, tokenizer = tiny_lm
    poison = 7
    with tiny_server(tiny_lm) as (url, served):
        forward = model.forward

        def failing_forward(*args, **kwargs):
            ids = kwargs.get("input_ids")
            if ids is not None and ids.shape[1] > 1 and bool((ids == poison).any()):
                raise RuntimeError("poisoned prompt")
            return forward(*args, **kwargs)

        model.forward = failing_forward
        try:
            served.scheduler.pause()  # both requests are prefilled in one batch
            results = {}

            def ask(name, prompt):
                body = {"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0}
                results[name] = raw_request(url, "POST", "/v1/completions", body)

            threads = [
                threading.Thread(target=ask, args=a)
                for a in (("bad", [poison, 9]), ("good", [9, 10]))
            ]
            for thread in threads:
                thread.start()
            while served.scheduler.waiting_count < 2:
                time.sleep(0.01)
            served.scheduler.resume()
            for thread in threads:
                thread.join(30)
        finally:
            del model.forward
        status, error = error_of(results["bad"])
        assert status == 500 and "poisoned prompt" in error["message"]
        assert results["good"][0] == 200
        assert served.scheduler.alive
        assert (
            raw_request(
                url, "POST", "/v1/completions", {"model": "tiny", "prompt": [9], "max_tokens": 2}
            )[0]
            == 200
        )
